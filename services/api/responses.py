"""JSON responses of the contract, serialised with orjson (the hot path's encoder)."""

import json
import math
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
    try:
        return json_response(body, status, headers=headers)
    except TypeError:  # client text echoed that orjson refuses: a 4xx must not become a 500
        content = json.dumps(_escaped(body), default=repr).encode()
        return Response(content, status, media_type="application/json", headers=headers)


def _escaped(value: Any) -> Any:
    """Lone surrogates as visible escapes (`\\ud800`), NaN as null (as orjson writes it);
    integers past 64 bits stay numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.encode(errors="backslashreplace").decode()
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value
