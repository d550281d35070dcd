"""JSON responses of the contract, serialised with orjson (the hot path's encoder)."""

from typing import Any

import orjson
from starlette.responses import Response


def json_response(content: Any, status: int = 200, **kwargs: Any) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json", **kwargs)


def error_response(
    status: int,
    message: str,
    detail: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """`{"error": ..., "detail": [{"field", "error", "expected"...}]}`, the same for every code."""
    body: dict[str, Any] = {"error": message}
    if detail:
        body["detail"] = detail
    return json_response(body, status, headers=headers)
