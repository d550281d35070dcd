"""`python -m services.drift [--port N]`: the drift service (one process; DRIFT_* settings)."""

import argparse

from services.drift.settings import DriftSettings
from services.serve import log_config


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    defaults = DriftSettings()
    parser = argparse.ArgumentParser(prog="python -m services.drift", description=__doc__)
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    args = parser.parse_args(argv)
    uvicorn.run(
        "services.drift.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=log_config(),
        server_header=False,
    )


if __name__ == "__main__":
    main()
