"""The bare-framework floor: FastAPI + uvicorn validating the same request model, no model.

    python -m services.tools.bench.floor titanic --port 8190

The body parameter is the generated request model of the catalog entry, so the floor pays
the same validation as the service, and the answer is a constant. uvicorn runs with the
options of services.serve (uvloop/httptools defaults, access log off, one worker).
"""

import argparse
import os

from fastapi import FastAPI
from fastapi.responses import Response

from contract.catalog import get_spec
from services.api.app import NO_TELEMETRY
from services.api.inputs import record_model, request_model
from services.serve import log_config

# The size and shape of a one-record answer of the service, so both send alike
ANSWER = (
    b'{"model":"floor","version":"1","alias":"champion","request_id":'
    b'"00000000000000000000000000000000","predictions":[{"label":"yes","probability":0.5}]}'
)


def create_app(key: str) -> FastAPI:
    spec = get_spec(key)
    body_model = request_model(spec, record_model(spec), 1000)
    app = FastAPI(title=f"{key} floor", telemetry=NO_TELEMETRY)  # as configured as the service

    async def predict(body: body_model) -> Response:  # type: ignore[valid-type]
        """A constant answer once the body is validated."""
        return Response(ANSWER, media_type="application/json")

    app.post("/predict")(predict)

    @app.get("/readyz")
    async def readyz() -> Response:
        return Response(b'{"status":"ready"}', media_type="application/json")

    return app


def app() -> FastAPI:
    """uvicorn's factory: the catalog key comes from BENCH_FLOOR_MODEL."""
    return create_app(os.environ["BENCH_FLOOR_MODEL"])


def run_factory(factory: str, host: str, port: int) -> None:
    """uvicorn as services.serve runs it (one worker, access log off), on an app factory: the
    floor's and the anchor's."""
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=1,
        log_config=log_config(),
        access_log=False,
        server_header=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.floor", description=__doc__
    )
    parser.add_argument("model", help="catalog key (params.yaml models:)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8190)
    args = parser.parse_args(argv)
    get_spec(args.model)
    os.environ["BENCH_FLOOR_MODEL"] = args.model
    run_factory("services.tools.bench.floor:app", args.host, args.port)


if __name__ == "__main__":
    main()
