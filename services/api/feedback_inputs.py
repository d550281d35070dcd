"""The bodies of `/feedback` and its OIP form, checked against the catalog's target.

    POST /feedback
    {"outcomes": [{"request_id": "<X-Request-Id of the answer>", "position": 0,
                   "outcome": <what happened: the task's outcome>}, ...]}

    POST /v2/models/{name}/feedback (tensors, as an inference request sends them)
    {"inputs": [{"name": "request_id", "datatype": "BYTES", "shape": [n], "data": [...]},
                {"name": "position", "datatype": "INT64", "shape": [n], "data": [...]},
                {"name": "outcome", "datatype": "BYTES" | "INT64" | "FP64"...,
                 "shape": [n] or [n, m], "data": [...]}]}

`position` is the record's index in its request (0 when omitted); an outcome of shape
[n, m] is a list of m values per record (a forecast's horizon, item ids).
"""

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from contract.catalog import ModelSpec
from contract.tasks import get_task
from services.api.errors import InputError, field_error
from services.api.feedback import Item
from services.api.inputs import describe_errors

REQUEST_ID = Annotated[str, Field(min_length=1, max_length=128)]  # what the guard keeps of one
OIP_INPUTS = ("request_id", "position", "outcome")


def feedback_model(spec: ModelSpec, max_items: int) -> type[BaseModel] | None:
    """The /feedback body of `spec`'s task; None where the task has no outcome to send."""
    outcome = get_task(spec.task).outcome(spec)
    if outcome is None:
        return None
    config = ConfigDict(extra="forbid", title=f"{spec.key}_feedback_item")
    item = create_model(
        f"{spec.key}_feedback_item",
        __config__=config,
        request_id=(REQUEST_ID, Field(description="the X-Request-Id of the answer")),
        position=(
            int,
            Field(0, ge=0, lt=max_items, description="the record's index in its request"),
        ),
        outcome=(outcome, Field(description=f"the true {spec.target.column}")),
    )
    items = Annotated[list[item], Field(min_length=1, max_length=max_items)]  # type: ignore[valid-type]
    title = f"{spec.key}_feedback"
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title), outcomes=items)


def parse(model: type[BaseModel], body: bytes) -> list[Item]:
    """The items of a /feedback body; InputError (400) naming each field at fault."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        detail = describe_errors(exc)
        raise InputError(400, f"invalid feedback: {detail[0]['field']}", detail) from exc
    return [as_item(o) for o in request.outcomes]  # type: ignore[attr-defined]


def as_item(outcome: Any) -> Item:
    value = outcome.outcome
    return outcome.request_id, outcome.position, orjson.dumps(value).decode()


def parse_tensors(model: type[BaseModel], body: bytes) -> tuple[list[Item], Any]:
    """The items of an OIP feedback request (and its id); InputError naming the tensor."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise field_error(400, "body", f"not valid JSON ({exc})") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise field_error(400, "inputs", "expected a list of tensors", list(OIP_INPUTS))
    columns = {name: _column(request["inputs"], name) for name in OIP_INPUTS}
    if columns["request_id"] is None or columns["outcome"] is None:
        raise field_error(400, "inputs", "request_id and outcome are required", list(OIP_INPUTS))
    size = len(columns["request_id"])
    for name, column in columns.items():
        if column is not None and len(column) != size:
            raise field_error(400, f"inputs[{name}]", f"{len(column)} rows, expected {size}")
    positions = columns["position"] or [0] * size
    rows = [
        {"request_id": r, "position": p, "outcome": o}
        for r, p, o in zip(columns["request_id"], positions, columns["outcome"], strict=True)
    ]
    return parse(model, orjson.dumps({"outcomes": rows})), request.get("id")


def _column(tensors: list[Any], name: str) -> list[Any] | None:
    """The rows of the tensor `name`: its data split by the shape's first dimension."""
    found = [t for t in tensors if isinstance(t, dict) and t.get("name") == name]
    if not found:
        return None
    if len(found) > 1:
        raise field_error(400, f"inputs[{name}]", "given twice")
    tensor = found[0]
    shape, data = tensor.get("shape"), tensor.get("data")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise field_error(400, f"inputs[{name}].shape", "expected [n] or [n, m]")
    if not isinstance(data, list):
        raise field_error(400, f"inputs[{name}].data", "expected a flat list")
    rows, width = shape[0], shape[1] if len(shape) == 2 else 1
    if len(data) != rows * width:
        raise field_error(400, f"inputs[{name}].data", f"{len(data)} values for shape {shape}")
    if len(shape) == 1:
        return list(data)
    return [data[i * width : (i + 1) * width] for i in range(rows)]
