"""ASGI middleware in front of the routes: request ids, credentials, limits, accounting.

Pure ASGI (no BaseHTTPMiddleware) because it sits on every request's hot path. For the
inference routes it refuses what is over the limits before any parsing (401 without one of
SERVE_API_KEYS where they are set, 503 for a request that queued past SERVE_QUEUE_TIMEOUT_S,
429 past the in-flight limit, 413 for the body), then times and counts the answer by model,
version, alias and status code, and logs one line with the request id.

Queueing: the proxy stamps each request with X-Request-Start (`t=<unix seconds>`, nginx's
$msec). Under overload the requests wait for the worker in the sockets and in the event
loop's queue, where no in-flight count sees them; one that has already waited longer than
SERVE_QUEUE_TIMEOUT_S gets a 503 with Retry-After before any work is spent on it, so a
backlog drains in microseconds per request instead of growing: the answers stay fast and
the clients are told to come back.
"""

import inspect
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.auth import challenge, presented
from services.api.bodies import BodyRefused, Budget, read_body, replay
from services.api.responses import error_response
from services.api.service import ModelService


def route_of(path: str) -> str | None:
    """The metrics label of an inference route, None for everything else."""
    if path == "/predict":
        return "/predict"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "/v2/infer"
    return None


_PREFIX = re.compile(r"(/[A-Za-z0-9._-]+)+")


def _behind_prefix(scope: Scope) -> Scope:
    """The reverse proxy's X-Forwarded-Prefix (/models/<key>) as the ASGI root_path, so that
    /docs points at <prefix>/openapi.json. Off the inference routes only; a malformed prefix
    is ignored."""
    for name, value in scope["headers"]:
        if name == b"x-forwarded-prefix":
            prefix = value.decode("latin-1")
            if _PREFIX.fullmatch(prefix):
                return {**scope, "root_path": scope.get("root_path", "") + prefix}
    return scope


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def queued_s(scope: Scope, now: float) -> float:
    """How long the request waited since the proxy stamped it (X-Request-Start: t=<unix
    seconds>, or the bare number); 0 without a stamp or with one from the future."""
    stamp = _header(scope, b"x-request-start")
    if not stamp:
        return 0.0
    try:
        started = float(stamp.removeprefix("t="))
    except ValueError:
        return 0.0
    waited = now - started
    return waited if 0 < waited < 3600 else 0.0


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-Id, or 32 hex digits as UUIDv7 lays them out: the time in
    milliseconds, then 80 random bits. Ids that grow with time land on the last page of the
    log's request-id index (feedback's look-up), so a commit adds to one page, not a random
    page per request."""
    given = _header(scope, b"x-request-id")
    if given:
        return given[:128]
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


Endpoint = Callable[[Request, ModelService], Awaitable[Response]]
Handler = Callable[[Request, Any], Response | Awaitable[Response]]


async def _refuse(send: Send, status: int, message: str, headers: list[Any]) -> None:
    response = error_response(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*response.raw_headers, *headers],
        }
    )
    await send({"type": "http.response.body", "body": response.body})


class Guard:
    """`direct`: POST routes whose handler the guard calls itself, past Starlette's exception
    middleware and router (~20 us a request, a tenth of a small model's); what they raise
    goes to the app's exception `handlers` as it would there."""

    def __init__(
        self,
        app: ASGIApp,
        service: ModelService,
        direct: Mapping[str, Endpoint] | None = None,
        handlers: Mapping[Any, Handler] | None = None,
    ) -> None:
        self.app, self.service = app, service
        self.direct, self.handlers = dict(direct or {}), handlers or {}
        self.inflight = 0
        self.bodies = Budget(service.settings.max_body_bytes_in_flight)
        self.gauge = service.metrics.inflight.labels(service.spec.key)
        self.count_inflight = service.metrics.live_gauge(self.gauge, lambda: self.inflight)
        shed, key = service.metrics.shed, service.spec.key
        self.shed = service.metrics.child(shed, (key, "queue"))
        self.busy = service.metrics.child(shed, (key, "inflight"))
        self.access_log = service.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        # champion or challenger is drawn by the caller's unit (a user), else by the request
        state["unit"] = (_header(scope, b"x-unit-id") or request_id)[:128]
        status = 500
        id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        route = route_of(scope["path"])
        if route is None:
            await self.app(_behind_prefix(scope), receive, send_with_id)
            return
        started = time.perf_counter()
        try:
            await self._guarded(scope, receive, send_with_id, state)
        finally:
            self._account(route, status, time.perf_counter() - started, state)

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]
    ) -> None:
        settings, keys = self.service.settings, self.service.api_keys
        if keys:
            token = presented(_header(scope, b"authorization"))
            if token is None or not keys.allows(token):
                header = [(b"www-authenticate", challenge(keys.scope).encode())]
                await _refuse(send, 401, "missing or wrong API key (SERVE_API_KEYS)", header)
                return
        waited = queued_s(scope, time.time()) if settings.queue_timeout_s else 0.0
        if waited > settings.queue_timeout_s:
            self.shed.inc()
            await _refuse(
                send,
                503,
                f"over capacity: the request queued {waited * 1000:.0f} ms, more than "
                f"SERVE_QUEUE_TIMEOUT_S ({settings.queue_timeout_s:g} s): retry",
                [(b"retry-after", b"1")],
            )
            return
        if self.inflight >= settings.max_concurrency:
            self.busy.inc()
            await _refuse(
                send,
                429,
                f"over {settings.max_concurrency} requests in flight",
                [(b"retry-after", b"1")],
            )
            return
        self.inflight += 1
        if self.count_inflight:
            self.gauge.inc()
        reservation = self.bodies.reservation()
        try:
            try:
                body = await read_body(scope, receive, settings.max_body_bytes, reservation)
            except BodyRefused as refused:
                await _refuse(send, refused.status, refused.message, refused.headers)
                return
            state["body"] = body
            endpoint = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
            if endpoint is None:
                await self.app(scope, replay(body, receive), send)
            else:
                await self._direct(endpoint, scope, replay(body, receive), send)
        finally:
            reservation.release()
            self.inflight -= 1
            if self.count_inflight:
                self.gauge.dec()

    async def _direct(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request, self.service)
        except Exception as exc:
            handler = next(
                (self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None
            )
            if handler is None:  # the server error middleware outside answers 500
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _account(self, route: str, status: int, seconds: float, state: dict[str, Any]) -> None:
        version, alias = state.get("served", ("", ""))
        code = str(status)
        metrics, labels = self.service.metrics, (self.service.spec.key, version, alias, route, code)
        metrics.inc(metrics.child(metrics.requests, labels))
        metrics.observe(metrics.child(metrics.latency, labels), seconds)
        self.access_log.write(
            f"request_id={state['request_id']} route={route} code={code} "
            f"model={self.service.spec.key} version={version} alias={alias} "
            f"ms={seconds * 1000:.2f}"
        )
