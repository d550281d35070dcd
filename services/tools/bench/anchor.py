"""The anchor: the FastAPI + ONNX Runtime app an engineer would write by hand for one model.

    python -m services.tools.bench.anchor titanic --port 8191 --cache <SERVE_CACHE_DIR>

It serves the champion's graph from the benchmark's cache with what every such app has and no
more: the generated request model (as the floor), the records-to-tensors mapping, one ONNX
Runtime session (one thread, as the service's) and the per-task answer, from an `async def`
route (no thread hop). No metrics, request ids, limits, prediction log, challenger or reload:
what the service costs beyond this column is the price of those, and issue 17 asks it to be
none (the service at least as fast). uvicorn runs as the floor does.
"""

import argparse
import os
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import Response

from contract.catalog import get_spec
from contract.settings import get_settings
from services.api.app import NO_TELEMETRY
from services.api.inputs import record_model, request_model
from services.api.runtime import LoadedModel, load
from services.api.store import ModelStore
from services.tools.bench.floor import run_factory


def champion(key: str, cache_dir: Path) -> LoadedModel:
    artifact = ModelStore(get_settings().mlflow_tracking_uri, cache_dir).fetch(key, "champion")
    if artifact is None:
        raise SystemExit(f"{key} has no @champion in the registry (make repro)")
    return load(get_spec(key), artifact)


def create_app(key: str, cache_dir: Path) -> FastAPI:
    spec = get_spec(key)
    model = champion(key, cache_dir)
    body_model = request_model(spec, record_model(spec), 1000)
    app = FastAPI(title=f"{key} anchor", telemetry=NO_TELEMETRY)

    async def predict(body: body_model) -> Response:  # type: ignore[valid-type]
        records = body.records  # type: ignore[attr-defined]
        predictions: list[dict[str, Any]] = model.format(model.run(model.feeds(records)))
        answer = {"model": key, "version": model.version, "predictions": predictions}
        return Response(orjson.dumps(answer), media_type="application/json")

    app.post("/predict")(predict)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def app() -> FastAPI:
    """uvicorn's factory: the catalog key and cache from BENCH_ANCHOR_MODEL / _CACHE."""
    return create_app(os.environ["BENCH_ANCHOR_MODEL"], Path(os.environ["BENCH_ANCHOR_CACHE"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.anchor", description=__doc__
    )
    parser.add_argument("model", help="catalog key (params.yaml models:)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--cache", type=Path, default=None, help="default: SERVE_CACHE_DIR")
    args = parser.parse_args(argv)
    get_spec(args.model)
    os.environ["BENCH_ANCHOR_MODEL"] = args.model
    cache_dir = args.cache or Path(os.environ.get("SERVE_CACHE_DIR", ".serving-cache"))
    os.environ["BENCH_ANCHOR_CACHE"] = str(cache_dir)
    run_factory("services.tools.bench.anchor:app", args.host, args.port)


if __name__ == "__main__":
    main()
