"""The ASGI app of one model service: the routes of routes/ (the REST contract, OIP v2,
health and metrics, admin) over one ModelService, behind the guard.

`create_app("titanic")` serves the catalog entry `titanic`; every model gets the same app.
"""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.catalog import get_spec
from services.api import oip
from services.api.errors import InputError, OverCapacity
from services.api.guard import Guard
from services.api.predlog import PredictionLogUnavailable
from services.api.responses import error_response
from services.api.routes import admin, feedback, health, predict
from services.api.routes import oip as oip_routes
from services.api.service import ModelService
from services.api.settings import ServeSettings
from services.api.store import ArtifactRefused
from services.api.tensors import TensorError

log = logging.getLogger("services.api.app")
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}
ROUTERS = (predict.router, health.router, admin.router, oip_routes.router, feedback.router)


def freeze_heap() -> None:
    """Imports and the loaded model live as long as the process: out of the collector's
    generations, a full collection scans only request objects (~1 ms instead of 150-200 ms)."""
    gc.collect()
    gc.freeze()


async def keep_loaded(service: ModelService) -> None:
    """Follow alias moves; retry quickly while nothing is loaded."""
    interval = service.settings.reload_interval_s
    frozen = service.lineup.ready
    while not (interval == 0 and service.lineup.ready):
        await asyncio.sleep(min(interval or 5.0, 5.0) if not service.lineup.ready else interval)
        try:
            await run_in_threadpool(service.lineup.reload)
        except Exception:  # reload() records its own failures; this loop must never end
            log.exception("%s: the reload loop failed; retrying", service.spec.key)
            continue
        if service.lineup.ready and not frozen:
            freeze_heap()
            frozen = True


LAG_PROBE_S = 0.1


async def probe_loop_lag(service: ModelService) -> None:
    """Every 100 ms, how late the loop ran a sleep's wake-up: the queueing of the process
    (requests waiting behind other requests' work, or for a CPU), as a histogram; then the
    requests' metrics, kept meanwhile in plain lists (ServiceMetrics.defer), are flushed."""
    loop = asyncio.get_running_loop()
    metrics = service.metrics
    lag = metrics.child(metrics.loop_lag, (service.spec.key,))
    while True:
        due = loop.time() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        lag.observe(max(0.0, loop.time() - due))
        metrics.flush()  # the requests' observations since the last probe (defer)


def create_app(model: str, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings(model=model)
    service = ModelService(get_spec(model), settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A worker takes connections once its model is loaded (several workers share the
        # port: none answers 503 while another is ready); when loading fails it starts anyway,
        # /readyz says why, and keep_loaded retries
        await run_in_threadpool(service.lineup.reload)
        if service.lineup.ready:
            freeze_heap()
        service.metrics.defer()  # this thread runs the loop: its requests' metrics
        tasks = [
            asyncio.create_task(keep_loaded(service)),
            asyncio.create_task(service.access_log.run()),
            asyncio.create_task(probe_loop_lag(service)),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # the last access-log flush
        service.metrics.flush()
        await service.prediction_log.close()
        service.stop_inference()

    app = FastAPI(
        title=f"{model} model service",
        description=service.spec.description,
        version="1",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks ask the providers on every request; the service's
        # own Prometheus metrics and request log cover what they would record
        telemetry=NO_TELEMETRY,
    )
    app.state.service = service
    for router in ROUTERS:
        app.include_router(router)
    document_model(app, service)
    add_error_handlers(app)
    # The router answers /predict's other methods (405) and documents it; a POST the guard
    # hands to the handler itself with the service (no dependency solving nor routing:
    # ~20 us a request, a tenth of a small model's)
    direct = {predict.PATH: predict.predict}
    app.add_middleware(Guard, service=service, direct=direct, handlers=app.exception_handlers)
    return app


def document_model(app: FastAPI, service: ModelService) -> None:
    """OpenAPI with this model's own request schemas for /predict and /feedback, and its name
    as the only value of the v2 routes' `name`, so generated requests reach the handlers."""
    ref = "#/components/schemas/{model}"
    schema = service.request_model.model_json_schema(ref_template=ref)
    definitions = schema.pop("$defs", {})
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    outcomes = None  # /feedback's body: the task's outcome type (none: the route says 404)
    if service.feedback_model is not None:
        outcomes = service.feedback_model.model_json_schema(ref_template=ref)
        definitions |= outcomes.pop("$defs", {})
    original = app.openapi

    def openapi() -> dict[str, Any]:
        document = original()  # FastAPI's, made once and cached: the changes below are too
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        document["paths"][predict.PATH]["post"]["requestBody"] = body
        if outcomes is not None:
            content = {"application/json": {"schema": outcomes}}
            document["paths"]["/feedback"]["post"]["requestBody"] = {
                "required": True, "content": content,
            }  # fmt: skip
        v2 = [
            op
            for path, ops in document["paths"].items()
            if path.startswith("/v2/models/")
            for op in ops.values()
        ]
        for parameter in (p for op in v2 for p in op.get("parameters", []) if p["name"] == "name"):
            parameter["schema"]["enum"] = [service.spec.key]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # unmatched paths (404), methods (405), credentials (401, 403): the contract's shape
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(InputError)
    async def input_error(_: Request, exc: InputError) -> Response:
        return error_response(exc.status, exc.message, exc.detail)

    @app.exception_handler(TensorError)
    async def tensor_error(_: Request, exc: TensorError) -> Response:
        return error_response(400, str(exc), [exc.detail()])

    @app.exception_handler(oip.UnknownModel)
    async def unknown_model(_: Request, exc: oip.UnknownModel) -> Response:
        return error_response(404, str(exc))

    @app.exception_handler(ArtifactRefused)
    async def not_ready(_: Request, exc: ArtifactRefused) -> Response:
        return error_response(503, f"no model loaded: {exc}", headers={"Retry-After": "5"})

    @app.exception_handler(PredictionLogUnavailable)
    async def not_logged(_: Request, exc: PredictionLogUnavailable) -> Response:
        # A prediction that cannot be stored is not acknowledged: the client retries
        message = f"prediction log unavailable, prediction not stored: {exc}"
        return error_response(503, message, headers={"Retry-After": "5"})

    @app.exception_handler(OverCapacity)
    async def over_capacity(_: Request, exc: OverCapacity) -> Response:
        return error_response(503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(TimeoutError)
    async def timeout(_: Request, exc: TimeoutError) -> Response:
        return error_response(504, "inference took longer than the service's timeout")
