"""The drift service: Evidently drift per model on a schedule and on demand, its gauges, HTML
reports, and the Alertmanager webhook that starts a gated retraining.

    python -m services.drift            # 127.0.0.1:8200 (DRIFT_* settings)
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.bodies import BodyRefused, read_body, replay
from services.drift.routes import alerts, canary, models, retraining, status
from services.drift.service import Drift
from services.drift.settings import DriftSettings

# The routes: routes/ (one APIRouter per area, the state injected); the state: service.py
MAX_BODY_BYTES = 2**20  # Alertmanager's notifications are a few KiB; the routes take no more
ROUTERS = (status.router, models.router, canary.router, retraining.router, alerts.router)


class BodyLimit:
    """A 413 for a body over `limit` bytes, declared or streamed, before a route (or its
    credential check: FastAPI reads the body first) holds it in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.limit)
        except BodyRefused as refused:
            detail = {"detail": refused.message}
            await Response(orjson.dumps(detail), refused.status, media_type="application/json")(
                scope, receive, send
            )
            return
        await self.app(scope, replay(body, receive), send)


def create_app(settings: DriftSettings | None = None) -> FastAPI:
    drift = Drift(settings or DriftSettings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(__import__, "evidently")  # ~7 s, once, before the first run
        task = asyncio.create_task(drift.schedule()) if drift.settings.schedule_s else None
        canaries = asyncio.create_task(drift.canaries())
        yield
        canaries.cancel()
        if task is not None:
            task.cancel()
        drift.retrainer.close()

    app = FastAPI(title="drift service", description=__doc__, lifespan=lifespan)
    app.state.drift = drift
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422 without echoing the input: a lone surrogate in it (or in a key, which
        is in `loc`) would fail the answer's encoding (a 500)."""
        errors = [
            {"loc": [_printable(part) for part in error["loc"]], "msg": error["msg"]}
            for error in exc.errors()[:20]
        ]
        return Response(orjson.dumps({"detail": errors}), 422, media_type="application/json")

    return app


def _printable(part: Any) -> Any:
    return part.encode(errors="backslashreplace").decode()[:80] if isinstance(part, str) else part
