"""The body-reading middlewares replay the body and then pass the connection's own messages on:
a response that waits for the client to go away must not be told it went (over real HTTP)."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope

from services.api.bodies import BodyRefused, Budget, read_body
from services.drift.app import BodyLimit

SIZE = 4 * 2**20  # the size of a drift report: the response outlives the replayed body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    report = tmp_path_factory.mktemp("report") / "report.html"
    report.write_bytes(b"x" * SIZE)

    async def page(request: Request) -> FileResponse:
        return FileResponse(report, media_type="text/html")

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = Starlette(routes=[Route("/report", page), Route("/echo", echo, methods=["POST"])])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(BodyLimit(app, 2**20), port=port, log_level="warning")
    served = uvicorn.Server(config)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    served.should_exit = True
    thread.join(timeout=10)


def test_a_file_response_behind_the_body_limit_arrives_whole(server: str) -> None:
    for _ in range(3):
        response = httpx.get(f"{server}/report", timeout=30)
        assert response.status_code == 200 and len(response.content) == SIZE


def test_the_replayed_body_reaches_the_route_and_a_large_one_is_refused(server: str) -> None:
    assert httpx.post(f"{server}/echo", content=b"y" * 1000, timeout=30).json() == {"size": 1000}
    refused = httpx.post(f"{server}/echo", content=b"y" * (2**20 + 1), timeout=30)
    assert refused.status_code == 413 and "body over" in refused.json()["detail"]


def chunks(*parts: bytes) -> Receive:
    """An ASGI connection sending `parts` as one body (more_body between them)."""
    messages = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def scope(length: int | None = None) -> Scope:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "headers": headers}


def test_a_worker_holds_at_most_its_budget_of_bodies() -> None:
    budget = Budget(1000)
    first, second = budget.reservation(), budget.reservation()
    # a declared length takes its share before a byte is read
    body = asyncio.run(read_body(scope(600), chunks(b"x" * 300, b"y" * 300), 800, first))
    assert len(body) == 600 and budget.held == 600
    with pytest.raises(BodyRefused) as refused:  # 600 + 500 > 1000: fast, nothing read
        asyncio.run(read_body(scope(500), chunks(), 800, second))
    assert refused.value.status == 503 and (b"retry-after", b"1") in refused.value.headers
    assert budget.held == 600 and second.bytes == 0
    # a body without a length takes its share chunk by chunk
    with pytest.raises(BodyRefused) as refused:
        asyncio.run(read_body(scope(), chunks(b"a" * 300, b"b" * 300), 800, second))
    assert refused.value.status == 503 and second.bytes == 300
    second.release()
    first.release()
    assert budget.held == 0
    small = budget.reservation()
    assert asyncio.run(read_body(scope(), chunks(b"a" * 300, b"b" * 300), 800, small)) == (
        b"a" * 300 + b"b" * 300
    )
    small.release()


def test_a_body_over_the_limit_is_a_413_declared_or_not() -> None:
    budget = Budget(10_000)
    reservation = budget.reservation()
    for length in (801, None):
        with pytest.raises(BodyRefused) as refused:
            asyncio.run(read_body(scope(length), chunks(b"x" * 500, b"x" * 301), 800, reservation))
        assert refused.value.status == 413 and "body over 800 bytes" in refused.value.message
    reservation.release()
    assert budget.held == 0
