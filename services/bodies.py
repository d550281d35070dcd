"""Request bodies read whole by an ASGI middleware, within a limit, and replayed to the app
behind it: the model services' guard and the drift service's body limit."""

from starlette.types import Message, Receive, Scope


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is over `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return None
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
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
