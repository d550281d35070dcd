"""Run one model service: `python -m services.serve <model key> [--port N] [--workers N]`.

uvicorn serves the app of services.api.app with its workers; the same command runs in the
local stack, in docker compose and in Kubernetes. SIGTERM lets in-flight requests finish
(up to SERVE_GRACEFUL_TIMEOUT_S) and refuses new connections.
"""

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from contract.catalog import UnknownModelError, get_spec
from services.api.settings import ServeSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"


def log_config(level: str = "INFO") -> dict[str, Any]:
    """One line per event on stderr, in every worker."""
    handler = {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LOG_FORMAT}},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "services": {"level": level},
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING"},  # services.requests logs each request
        },
    }


def app() -> FastAPI:
    """uvicorn's factory in each worker: the model comes from SERVE_MODEL."""
    from services.api.app import create_app

    settings = ServeSettings()
    return create_app(settings.model, settings)


def prepare_metrics_dir(workers: int) -> None:
    """Several workers share their metrics through files in an emptied folder."""
    if workers < 2 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="prom-"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    defaults = ServeSettings()
    parser = argparse.ArgumentParser(prog="python -m services.serve", description=__doc__)
    parser.add_argument("model", help="catalog key (params.yaml models:)")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    args = parser.parse_args(argv)
    try:
        get_spec(args.model)
    except UnknownModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    os.environ["SERVE_MODEL"] = args.model
    prepare_metrics_dir(args.workers)
    uvicorn.run(
        "services.serve:app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=log_config(),
        access_log=False,
        timeout_graceful_shutdown=int(defaults.graceful_timeout_s),
        timeout_keep_alive=int(defaults.keepalive_s),
        server_header=False,
    )


if __name__ == "__main__":
    main()
