"""Open Inference Protocol v2 tensors: JSON and the binary tensor extension, both ways.

The binary extension (what `tritonclient.http` sends by default) puts a JSON header of
`Inference-Header-Content-Length` bytes first and the raw tensors after it, in input order.
"""

import base64
import json
import math
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from contract.catalog import InputField

# Beyond these a shape is refused before its data is looked at (the data must match it anyway,
# and a body is bounded by SERVE_MAX_BODY_BYTES): a clear message, not an overflowed product
MAX_DIMS = 8
MAX_ELEMENTS = 2**31 - 1
DATATYPES = {  # OIP datatype -> numpy dtype
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
ONNX_TYPES = {  # ONNX Runtime type string -> OIP datatype
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(uint8)": "UINT8",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
}
NUMERIC_TYPES = {
    "FP16",
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
}


class TensorError(ValueError):
    """A client mistake in an inference request; `field` names the tensor or header part."""

    def __init__(self, field: str, message: str, expected: Any = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.expected = field, message, expected

    def detail(self) -> dict[str, Any]:
        out = {"field": self.field, "error": self.message}
        return out | ({"expected": self.expected} if self.expected is not None else {})


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """gzip / deflate request bodies (tritonclient's request_compression_algorithm)."""
    if not encoding or encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise TensorError(
            "Content-Encoding", f"unsupported encoding {encoding!r}", "gzip or deflate"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise TensorError("body", f"not valid {encoding} data ({exc})") from exc
    if len(out) > limit:
        raise OverflowError(f"decompressed body is over {limit} bytes")
    if not inflater.eof:  # zlib takes a cut-off stream quietly: it would be an empty body
        raise TensorError("body", f"not valid {encoding} data (the stream is cut off)")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(JSON header, binary tail)."""
    size = len(body)
    if header_length is not None:
        # isdigit() alone takes "²" (a latin-1 header byte), which int() refuses
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > size:
            raise TensorError(
                "Inference-Header-Content-Length",
                f"{header_length!r} is not a length within the {size}-byte body",
            )
        size = int(header_length)
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError:
        header = _lenient_json(body[:size])
    if not isinstance(header, dict):
        raise TensorError("body", "must be a JSON object", {"inputs": "[...]"})
    return header, body[size:]


# A surrogate escape: "\ud83d\ude00" is one character, a lone "\ud800" is a str that no
# UTF-8 encoder takes (echoed in an answer or logged, it was a 500)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lenient_json(text: bytes) -> Any:
    """JSON with NaN / Infinity, which tritonclient writes for missing floats (as Triton reads).

    orjson refuses what json takes: invalid or UTF-16 text (json.loads guesses the encoding
    and passes encoded surrogates), lone surrogate escapes; refused here too."""
    try:
        value = json.loads(text.decode())
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise TensorError("body", f"not valid UTF-8 text: a lone surrogate ({exc.reason})") from exc
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError; nesting: RecursionError
        raise TensorError("body", f"not valid JSON ({type(exc).__name__}: {exc})") from exc
    return value


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError("truncated length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError("element longer than the data")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def serialize_bytes(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _dimension(value: Any) -> bool:
    """A non-negative JSON integer (JSON's true is no size, though Python counts it as 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parameters_of(holder: dict[str, Any], field: str) -> dict[str, Any]:
    """An OIP `parameters` member (of the request, an input or an output): an object, or
    absent."""
    parameters = holder.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TensorError(field, f"parameters must be an object, got {parameters!r:.80}")
    return parameters


def read_input(spec: dict[str, Any], tail: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One request input as an array of its declared datatype and shape; new tail offset."""
    name = spec.get("name")
    if not isinstance(name, str):
        raise TensorError("inputs", f"each input's name must be a string, got {name!r:.80}")
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise TensorError(name, f"unknown datatype {datatype!r:.80}", sorted(DATATYPES))
    if not isinstance(shape, list) or not all(_dimension(d) for d in shape):
        raise TensorError(name, f"shape must be a list of non-negative integers, got {shape!r:.80}")
    count = math.prod(shape)  # Python's integers: numpy's int64 product wraps to 0 or less
    if count > MAX_ELEMENTS or len(shape) > MAX_DIMS:
        raise TensorError(
            name, f"shape {shape} is over the limit ({MAX_DIMS} dims, {MAX_ELEMENTS} elements)"
        )
    size = parameters_of(spec, name).get("binary_data_size")
    if size is not None and not _dimension(size):
        raise TensorError(
            name, f"binary_data_size must be a non-negative integer, got {size!r:.80}"
        )
    try:
        if size is not None:
            raw = tail[offset : offset + int(size)]
            if len(raw) != int(size):
                raise TensorError(name, f"binary_data_size {size} runs past the body")
            offset += int(size)
            if datatype == "BYTES":
                array = np.array(_deserialize_bytes(raw), dtype=object)
            else:
                array = np.frombuffer(raw, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<"))
        else:
            data = spec.get("data")
            if data is None:
                raise TensorError(name, "has neither data nor parameters.binary_data_size")
            if not isinstance(data, list):
                raise TensorError(name, f"data must be a JSON array, got {type(data).__name__}")
            array = np.array(data, dtype=object if datatype == "BYTES" else None)
            array = array.reshape(-1)
            array = _text(array, name) if datatype == "BYTES" else _numeric(array, datatype, name)
    except (ValueError, TypeError, OverflowError) as exc:  # Overflow: 10**400, no double
        if isinstance(exc, TensorError):
            raise
        raise TensorError(name, f"data does not fit datatype {datatype} ({exc})") from exc
    if array.size != count:
        raise TensorError(name, f"shape {shape} needs {count} elements, data has {array.size}")
    return array.reshape(shape), offset


def _text(array: np.ndarray, name: str) -> np.ndarray:
    """BYTES elements in JSON are strings (as Triton takes them): str() of a number, a null or
    a nested list would be served as text."""
    for value in array:
        if not isinstance(value, str):
            raise TensorError(name, f"BYTES data must be strings, got {value!r:.80}")
    return array


def _numeric(array: np.ndarray, datatype: str, name: str) -> np.ndarray:
    if array.dtype == object:  # JSON nulls: missing values, NaN for the nullable fields
        if any(v is not None and not isinstance(v, int | float) for v in array):
            raise TensorError(name, f"{datatype} data must be numbers")
        array = np.array([np.nan if v is None else v for v in array], dtype=np.float64)
    elif array.dtype.kind not in "biuf":
        raise TensorError(name, f"{datatype} data must be numbers, got {array.dtype.kind!r} data")
    target = np.dtype(DATATYPES[datatype])
    if target.kind in "biu" and array.dtype.kind == "f":  # a cast would make NaN int64's minimum
        if np.isnan(array).any():
            raise TensorError(name, f"null or NaN is no {datatype} value", "FP32/FP64 for NaN")
        if target.kind in "iu" and array.size:
            info = np.iinfo(target.name)
            if array.min() < info.min or array.max() > info.max:
                raise TensorError(name, f"values outside {datatype}'s range")
    return array.astype(target)


def _decoded(
    name: str, array: np.ndarray, datatype: str, what: str, decode: Callable[[bytes], Any]
) -> list[Any]:
    """Each element of a BYTES tensor [N] (or [N, 1]) of encoded media (raw bytes in binary;
    base64 text in JSON), decoded; a TensorError naming the element otherwise."""
    if datatype != "BYTES":
        raise TensorError(name, f"datatype {datatype}", f"BYTES ({what})")
    if array.ndim not in (1, 2) or array.size != len(array):
        raise TensorError(name, f"shape {list(array.shape)}", "[N] or [N, 1]")
    decoded = []
    for i, value in enumerate(array.reshape(-1).tolist()):
        try:
            raw = value if isinstance(value, bytes) else base64.b64decode(str(value), validate=True)
            decoded.append(decode(raw))
        except ValueError as exc:  # binascii.Error too
            raise TensorError(f"{name}[{i}]", str(exc)) from exc
    return decoded


def photo_feeds(
    name: str, field: InputField, array: np.ndarray, datatype: str
) -> dict[str, np.ndarray]:
    """A BYTES tensor of encoded pictures as the graph's two inputs: the padded pixels and
    each picture's size."""
    from contract.feeds import SIZE_SUFFIX, photo_tensors
    from services.api.inputs import decode_photo_bytes

    height, width = field.shape or (0, 0)
    photos = _decoded(
        name, array, datatype, "encoded PNG or JPEG pictures",
        lambda raw: decode_photo_bytes(raw, height, width),
    )  # fmt: skip
    pictures, sizes = photo_tensors(photos)
    return {name: pictures, name + SIZE_SUFFIX: sizes}


def recording_feeds(
    name: str, field: InputField, array: np.ndarray, datatype: str
) -> dict[str, np.ndarray]:
    """A BYTES tensor of encoded recordings as the graph's two inputs: the padded samples and
    each recording's sample count."""
    from contract.feeds import SIZE_SUFFIX, recording_tensors
    from services.api.inputs import decode_recording_bytes

    (max_samples,) = field.shape or [0]
    recordings = _decoded(
        name, array, datatype, "encoded WAV or FLAC recordings",
        lambda raw: decode_recording_bytes(raw, max_samples),
    )  # fmt: skip
    samples, sizes = recording_tensors(recordings, max_samples)
    return {name: samples, name + SIZE_SUFFIX: sizes}


def to_feed(name: str, field: InputField, array: np.ndarray, datatype: str) -> np.ndarray:
    """A request tensor checked against its catalog field, shaped as the graph wants it."""
    if field.type == "image":
        shape = tuple(field.shape or ())
        if datatype != "UINT8":
            raise TensorError(name, f"datatype {datatype}", "UINT8 pixels")
        if array.ndim != len(shape) + 1 or array.shape[1:] != shape:
            raise TensorError(name, f"shape {list(array.shape)}", [-1, *shape])
        return np.ascontiguousarray(array)
    if field.type == "series":  # [N, length] numbers, all present
        (length,) = field.shape or [0]
        if array.ndim != 2 or array.shape[1] != length:
            raise TensorError(name, f"shape {list(array.shape)}", [-1, length])
        return _checked_numbers(name, field, array, datatype)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] != 1:
        raise TensorError(name, f"shape {list(array.shape)}", "[N] or [N, 1]")
    if field.type in ("float", "int"):
        return _checked_numbers(name, field, array, datatype)
    if datatype != "BYTES":
        raise TensorError(name, f"datatype {datatype}", "BYTES (UTF-8 strings)")
    try:
        text = np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in array[:, 0]], dtype=object
        ).reshape(-1, 1)
    except UnicodeDecodeError as exc:
        raise TensorError(name, "not UTF-8 text") from exc
    if field.values:
        allowed = set(field.values) | ({""} if field.nullable else set())
        bad = sorted({v for v in text[:, 0] if v not in allowed})
        if bad:
            raise TensorError(name, f"values {bad[:5]} are not allowed", field.values)
    elif not field.nullable and (text == "").any():
        raise TensorError(name, "empty text is not allowed: the field is required")
    return text


def _checked_numbers(name: str, field: InputField, array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype not in NUMERIC_TYPES:
        raise TensorError(name, f"datatype {datatype}", "FP32 (or another numeric type)")
    values = array.astype(np.float32)
    missing = np.isnan(values)
    if missing.any() and not field.nullable:
        raise TensorError(name, "missing values (NaN / null) in a required field")
    present = values[~missing]
    if np.isinf(present).any():
        raise TensorError(name, "infinite values")
    bounds = {"min": field.min, "max": field.max}
    if field.min is not None and (present < field.min).any():
        raise TensorError(name, f"values below {field.min}: {float(present.min())}", bounds)
    if field.max is not None and (present > field.max).any():
        raise TensorError(name, f"values above {field.max}: {float(present.max())}", bounds)
    if field.type == "int" and (present != np.round(present)).any():
        raise TensorError(name, "fractional values in an integer field")
    return values


def encode_outputs(
    outputs: dict[str, np.ndarray], binary: set[str]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Output descriptors (JSON data, or binary_data_size) and the binary blobs, in order."""
    described, blobs = [], []
    for name, array in outputs.items():
        datatype = (
            "BYTES"
            if array.dtype == object
            else next(
                k for k, v in DATATYPES.items() if k != "BYTES" and np.dtype(v) == array.dtype
            )
        )
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            blob = (
                serialize_bytes(array)
                if datatype == "BYTES"
                else array.astype(array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            flat = array.reshape(-1)
            entry["data"] = [v.decode() if isinstance(v, bytes) else v for v in flat.tolist()]
        described.append(entry)
    return described, blobs
