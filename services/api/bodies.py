"""Request bodies read whole by an ASGI middleware, within a limit, and replayed to the app
behind it: the model services' guard and the drift service's body limit.

A worker also bounds the bytes of all the bodies it holds at once (`Budget`): without it, 64
requests in flight of 16 MiB each hold a GiB. A body takes its share as it arrives (all of a
declared Content-Length at once, before a byte is read) and gives it back when its request
ends; past the budget the request is refused fast with 503 and Retry-After."""

from starlette.types import Message, Receive, Scope


class BodyRefused(Exception):
    """A body the middleware will not read: its status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Budget:
    """Bytes of request bodies one worker holds at once."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def reservation(self) -> "Reservation":
        return Reservation(self)


class Reservation:
    """One request's share of a Budget; `release` gives it all back."""

    def __init__(self, budget: Budget) -> None:
        self.budget, self.bytes = budget, 0

    def take(self, size: int) -> None:
        budget = self.budget
        if budget.held + size > budget.limit:
            message = f"over {budget.limit} bytes of request bodies in flight; retry shortly"
            raise BodyRefused(503, message, [(b"retry-after", b"1")])
        budget.held += size
        self.bytes += size

    def release(self) -> None:
        self.budget.held -= self.bytes
        self.bytes = 0


def declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def read_body(
    scope: Scope, receive: Receive, limit: int, reservation: Reservation | None = None
) -> bytes:
    """The whole body; BodyRefused (413) as soon as it is over `limit` bytes, or (503) when
    `reservation`'s budget cannot hold it. The caller releases the reservation."""
    over = BodyRefused(413, f"body over {limit} bytes", [])
    declared = declared_length(scope)
    if declared is not None:
        if declared > limit:
            raise over
        if reservation is not None:
            reservation.take(declared)  # the server stops a body at its declared length
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise over
        if reservation is not None and declared is None:
            reservation.take(len(chunk))
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for an app behind a middleware that read the body: the body, then the
    connection's own messages. A response that listens for the client going away (Starlette's
    FileResponse and StreamingResponse under ASGI < 2.4) must wait for a real disconnect: one
    made up after the body cut a 4 MB report off after its headers."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
