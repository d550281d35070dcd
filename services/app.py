"""The ASGI app of one model service: the common REST contract, OIP v2, health and metrics.

`create_app("titanic")` serves the catalog entry `titanic`; every model gets the same app.
"""

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from contract.catalog import get_spec
from services import auth, oip
from services.errors import InputError
from services.guard import Endpoint, Guard
from services.predlog import PredictionLogUnavailable
from services.responses import error_response, json_response
from services.service import ModelService
from services.settings import ServeSettings
from services.store import ArtifactRefused
from services.tensors import TensorError

log = logging.getLogger("services.app")
NO_TELEMETRY: Any = {"tracing": False, "metrics": False, "logs": False}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid input: `detail` names each field and what was expected"},
    413: {"description": "Body or record count over the limit"},
    429: {"description": "Too many requests in flight; retry after `Retry-After` seconds"},
    503: {"description": "No model loaded yet (see /readyz), or the prediction log is down"},
    504: {"description": "Inference took longer than the service's timeout"},
}


def freeze_heap() -> None:
    """Imports and the loaded model live as long as the process: out of the collector's
    generations, a full collection scans only request objects (~1 ms instead of 150-200 ms)."""
    gc.collect()
    gc.freeze()


async def keep_loaded(service: ModelService) -> None:
    """Follow alias moves; retry quickly while nothing is loaded."""
    interval = service.settings.reload_interval_s
    frozen = service.models.ready
    while not (interval == 0 and service.models.ready):
        await asyncio.sleep(min(interval or 5.0, 5.0) if not service.models.ready else interval)
        try:
            await run_in_threadpool(service.models.reload)
        except Exception:  # reload() records its own failures; this loop must never end
            log.exception("%s: the reload loop failed; retrying", service.spec.key)
            continue
        if service.models.ready and not frozen:
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
        await run_in_threadpool(service.models.reload)
        if service.models.ready:
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
    direct = add_routes(app, service)
    oip.add_routes(app, service)
    add_error_handlers(app)
    app.add_middleware(Guard, service=service, direct=direct, handlers=app.exception_handlers)
    return app


def add_routes(app: FastAPI, service: ModelService) -> dict[str, Endpoint]:
    """The routes; returns those the guard calls directly (path: handler)."""
    schema = service.request_model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    body_doc = {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}
    }

    @app.post("/predict", openapi_extra=body_doc, responses=ERROR_RESPONSES)
    async def predict(request: Request) -> Response:
        """Predictions for 1..N named-field records, with the model version that made them."""
        answer, route, records = await service.predict(request.state.body, request.state.request_id)
        request.state.served = (route.serving.version, route.serving.alias)
        await service.log_records(answer, records)  # committed before the answer is sent
        task = None
        if route.shadow is not None:
            task = BackgroundTask(
                service.score_shadow,
                route,
                records,
                request.state.request_id,
                answer["predictions"],
            )
        return json_response(answer, background=task)

    # FastAPI documents /predict (OpenAPI, /docs); the guard calls the handler itself (no
    # dependency solving, which it never uses, nor Starlette's router), and this plain route
    # in front answers what the guard passes on (a 405 for another method)
    app.router.routes.insert(0, Route("/predict", predict, methods=["POST"]))

    @app.get("/livez")
    async def livez() -> Response:
        """200 while the process answers."""
        return json_response({"status": "live"})

    @app.get("/readyz", responses={503: {"description": "No model loaded (the reason says why)"}})
    async def readyz() -> Response:
        """200 once a champion is loaded and checked, 503 before (with the reason)."""
        if service.models.ready:
            body: dict[str, Any] = {
                "status": "ready",
                "model": service.spec.key,
                "versions": service.models.versions(),
            }
            if service.models.problem:  # serving the loaded versions; the last reload failed
                body["reload_problem"] = service.models.problem
            if service.spec.features:  # entity keys: served, or why not (records still are)
                body["features"] = (
                    service.entities.online.describe()
                    if service.entities
                    else {"problem": service.features_problem}
                )
            return json_response(body)
        return error_response(503, f"not ready: {service.models.problem}")

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics of every worker of this service."""
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/admin/reload", dependencies=[Depends(auth.bearer(service.admin))])
    async def reload() -> Response:
        """Follow the registry's aliases now instead of at the next poll (this worker); needs
        SERVE_ADMIN_TOKEN as a bearer token."""
        versions = await run_in_threadpool(service.models.reload)
        return json_response(
            {"versions": versions, "problem": service.models.problem or None},
            200 if service.models.ready else 503,
        )

    original = app.openapi

    def openapi() -> dict[str, Any]:
        document = original()
        document.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return {"/predict": predict}


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

    @app.exception_handler(TimeoutError)
    async def timeout(_: Request, exc: TimeoutError) -> Response:
        return error_response(504, "inference took longer than the service's timeout")
