"""Open Inference Protocol v2, so `tritonclient` talks to every service as to Triton: the
model a route names, the tensors in and out (the routes: routes/oip.py).

The tensors are the registered ONNX graph's own inputs and outputs (one input per catalog
field), as Triton would serve the same file; each input is checked against its field.
"""

from typing import Any

import numpy as np
import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from contract.feeds import SIZE_SUFFIX, SIZED, one_at_a_time
from services.api.errors import field_error
from services.api.responses import json_response
from services.api.runtime import LoadedModel
from services.api.service import ModelService
from services.api.store import ArtifactRefused
from services.api.tensors import (
    ONNX_TYPES,
    TensorError,
    decompress,
    encode_outputs,
    parameters_of,
    photo_feeds,
    read_input,
    recording_feeds,
    split_body,
    to_feed,
)

INFER_REQUEST = {  # OIP v2 inference request (JSON form)
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {
                        "type": "string",
                        "enum": ["BOOL", "UINT8", "INT32", "INT64", "FP32", "FP64", "BYTES"],
                    },
                    "parameters": {"type": "object"},
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


class UnknownModel(LookupError):
    """A model name or version this service does not serve: 404."""


SERVER = {"name": "mlops-reference", "version": "1", "extensions": ["binary_tensor_data"]}


def _shape(dims: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in dims]


def _encoded(model: LoadedModel, name: str) -> bool:
    """A photo or a recording: sent encoded, decoded by the service, fed with its size."""
    field = model.spec.fields.get(name)
    return field is not None and field.type in SIZED


def _made_here(model: LoadedModel, graph_input: Any) -> bool:
    """A photo's or a recording's sizes: the service measures what it decodes."""
    name = str(graph_input.name)
    return name.endswith(SIZE_SUFFIX) and _encoded(model, name.removesuffix(SIZE_SUFFIX))


def _input(model: LoadedModel, graph_input: Any) -> dict[str, Any]:
    """An input as a client sends it: a photo or a recording encoded (BYTES [N]: PNG or JPEG,
    WAV or FLAC)."""
    if _encoded(model, graph_input.name):
        return {"name": graph_input.name, "datatype": "BYTES", "shape": [-1]}
    datatype = ONNX_TYPES.get(graph_input.type, graph_input.type)
    return {"name": graph_input.name, "datatype": datatype, "shape": _shape(graph_input.shape)}


def metadata(model: LoadedModel, versions: list[str]) -> dict[str, Any]:
    session = model.session
    return {
        "name": model.name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [_input(model, i) for i in session.get_inputs() if not _made_here(model, i)],
        "outputs": [
            {"name": o.name, "datatype": ONNX_TYPES.get(o.type, o.type), "shape": _shape(o.shape)}
            for o in session.get_outputs()
        ],
    }


def pick(service: ModelService, name: str, version: str | None, unit: str) -> LoadedModel:
    """The model a v2 route means (`unit`: what draws champion or challenger); UnknownModel
    (404) or ArtifactRefused (503) if none."""
    key, lineup = service.spec.key, service.lineup
    if name != key:
        raise UnknownModel(f"unknown model {name!r}; this service serves {key!r}")
    if not lineup.ready:
        raise ArtifactRefused(lineup.problem)
    if version is None:
        return lineup.assign(unit).serving
    model = lineup.by_version(version)
    if model is None:
        loaded = [v for v in lineup.versions().values() if v]
        raise UnknownModel(f"{key} has no loaded version {version!r}; loaded: {loaded}")
    return model


async def infer(service: ModelService, model: LoadedModel, request: Request) -> Response:
    """An inference request on `model`: tensors in, the outputs asked for (all by default) out."""
    header, arrays, size = parse(service, request)
    parameters: dict[str, Any] = {"alias": model.alias}
    if service.spec.features and service.spec.features.entity in arrays:
        feeds, looked_up = await service.entity_feeds(model, _entity_rows(service, arrays))
        parameters |= looked_up
    elif one_at_a_time(service.spec):  # decoding pictures or recordings: off the event loop
        feeds = await run_in_threadpool(_feeds, service, arrays, size)
    else:
        feeds = _feeds(service, arrays, size)
    wanted, binary = requested_outputs(model, header)
    chunk = service.settings.inference_chunk
    result = await service.infer(model.run_chunked, size, feeds, chunk, wanted)
    predictions = service.answers(model, result)
    service.observe(model, predictions, size, "/v2/infer")
    request.state.served = (model.version, model.alias)
    await service.log_tensors(model, feeds, result, predictions, request.state.request_id)
    outputs, blobs = encode_outputs(result, binary)
    answer = {
        "model_name": service.spec.key,
        "model_version": model.version,
        "outputs": outputs,
        "parameters": parameters,
    }
    if "id" in header:
        answer["id"] = header["id"]
    return encode(answer, blobs)


def parse(
    service: ModelService, request: Request
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, str]], int]:
    """(request header, the input tensors with their datatypes, batch size)."""
    limit = service.settings.max_body_bytes
    try:
        body = decompress(request.state.body, request.headers.get("content-encoding"), limit)
    except OverflowError as exc:
        raise field_error(413, "body", str(exc)) from exc
    header, tail = split_body(body, request.headers.get("inference-header-content-length"))
    if not isinstance(header.get("id", ""), str):  # echoed in the answer
        raise TensorError("id", f"must be a string, got {header['id']!r:.80}")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TensorError(
            "inputs", "must be a non-empty list of tensors", sorted(service.spec.fields)
        )
    arrays: dict[str, tuple[np.ndarray, str]] = {}
    offset = 0
    for entry in inputs:
        if not isinstance(entry, dict):
            raise TensorError("inputs", "each input must be an object with name, shape, datatype")
        array, offset = read_input(entry, tail, offset)
        name = str(entry.get("name"))
        known = [*service.spec.fields, *_entity_inputs(service)]
        if name not in known:
            raise TensorError(name, "not an input of this model", sorted(known))
        arrays[name] = (array, str(entry["datatype"]))
    if offset != len(tail):  # the client lays the tensors out otherwise than it says
        extra = len(tail) - offset
        raise TensorError("body", f"{extra} bytes after the binary tensors ({offset} declared)")
    sizes = {a.shape[0] if a.ndim else 1 for a, _ in arrays.values()}
    if len(sizes) != 1:
        raise TensorError("inputs", f"batch sizes differ between inputs: {sorted(sizes)}")
    (size,) = sizes
    if size > service.max_records:
        raise field_error(
            413,
            "inputs",
            f"batch of {size} is over the limit",
            {"max_records": service.max_records},
        )
    if size == 0:
        raise TensorError("inputs", "batch size 0: send at least one element")
    return header, arrays, size


def _entity_inputs(service: ModelService) -> list[str]:
    """A Feast-backed model also takes its entity key as a BYTES input (then: request fields)."""
    return [service.spec.features.entity] if service.spec.features else []


def _entity_rows(
    service: ModelService, arrays: dict[str, tuple[np.ndarray, str]]
) -> list[dict[str, Any]]:
    """One entity row per element: the key (decoded) and the request fields sent with it."""
    columns: dict[str, list[Any]] = {}
    for name, (array, _) in arrays.items():
        if array.ndim not in (1, 2) or array.size != len(array):  # a scalar, or a row of values
            raise TensorError(name, f"shape {list(array.shape)}", "[N] or [N, 1]")
        try:
            columns[name] = [
                v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()
            ]
        except UnicodeDecodeError as exc:  # a binary BYTES tensor's element
            raise TensorError(name, "not UTF-8 text") from exc
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _feeds(
    service: ModelService, arrays: dict[str, tuple[np.ndarray, str]], size: int
) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for name, field in service.spec.fields.items():
        if name in arrays and field.type == "photo":
            feeds |= photo_feeds(name, field, *arrays[name])
        elif name in arrays and field.type == "audio":
            feeds |= recording_feeds(name, field, *arrays[name])
        elif name in arrays:
            feeds[name] = to_feed(name, field, *arrays[name])
        elif field.nullable and field.type in ("float", "int"):
            feeds[name] = np.full((size, 1), np.nan, np.float32)
        elif field.nullable:
            feeds[name] = np.full((size, 1), "", object)
        else:
            raise TensorError(name, "required input is missing", sorted(service.spec.fields))
    return feeds


def requested_outputs(model: LoadedModel, header: dict[str, Any]) -> tuple[list[str], set[str]]:
    """(output names to compute, those to return as binary)."""
    available = [o.name for o in model.session.get_outputs()]
    requested = header.get("outputs")
    all_binary = bool(parameters_of(header, "parameters").get("binary_data_output", False))
    if not requested:  # every output of the model, as Triton answers
        return available, set(available) if all_binary else set()
    if not isinstance(requested, list):
        raise TensorError("outputs", "must be a list of {name, parameters}", available)
    names, binary = [], set()
    for entry in requested:
        name = str(entry.get("name")) if isinstance(entry, dict) else str(entry)
        if name not in available:
            raise TensorError(f"outputs.{name:.80}", "not an output of this model", available)
        names.append(name)
        parameters = parameters_of(entry, f"outputs.{name}") if isinstance(entry, dict) else {}
        if parameters.get("binary_data", all_binary):
            binary.add(name)
    return names, binary


def encode(answer: dict[str, Any], blobs: list[bytes]) -> Response:
    if not blobs:
        return json_response(answer)
    header = orjson.dumps(answer)
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
