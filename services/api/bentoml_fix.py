"""A fix for BentoML 1.4's p99, applied by services.bento (found by `make bench`).

BentoML 1.4's TimeoutMiddleware arms `loop.call_later(traffic.timeout, ...)` per request and
never cancels it. Each timer keeps its waiter future and the request's contextvars snapshot
(OpenTelemetry span, BentoML request context) alive for the whole timeout: at 2,000 req/s and
a 20 s timeout, ~800k live objects. Full garbage collections then run every second or two and
scan all of them, stalling the event loop for 100-500 ms: that is the p99 (measured with
gc.callbacks). The replacement below is the same middleware, cancelling its timer when the
request is done.
"""

import asyncio
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send


async def _timeout_call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """TimeoutMiddleware.__call__ of BentoML 1.4.39, plus the `handle.cancel()`."""
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    handle = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def started(message: Message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    task = asyncio.ensure_future(self.app(scope, receive, started))
    try:
        await waiter
    except TimeoutError:
        if task.cancel():
            message = f"Not able to process the request in {self.timeout} seconds"
            await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
    else:
        await task
    finally:
        handle.cancel()


def apply() -> None:
    """Patch TimeoutMiddleware.__call__ (BentoML 1.4.x; checked by the tests and the bench)."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
