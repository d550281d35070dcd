"""Request models generated from a catalog entry: named, typed, constrained fields.

The same `fields:` that check the raw data at prepare check every served record, so the
service accepts exactly what the model was trained on, and says which field is wrong.
"""

import base64
import io
import math
import struct
from collections.abc import Collection
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
)

from contract.audio import SAMPLE_RATE, Recording, read_recording
from contract.catalog import InputField, ModelSpec

MAX_TEXT = 20_000  # characters of one text field; longer is an input error, not a slow request
MAX_KEY = 128  # characters of an entity key (ids, not text)
FLOAT32_MAX = 3.4028234663852886e38
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The chunks that decoding reads. The others are metadata the model never sees, and Pillow
# inflates the compressed ones (zTXt, iTXt, iCCP) up to 64 MiB an image: 400 PNGs of 27 KB
# of text chunks in one body took 25 s to serve, 0.3 s with those chunks left unread
PIXEL_CHUNKS = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Photos a request may carry: each decodes to up to height x width x 3 bytes whatever its
# size on the wire (a 1000x1000 PNG of one colour is 3 KB and 3 MB decoded)
MAX_PHOTOS = 8
# The most bytes an encoded photo may take on the wire, whatever its dimensions
MAX_PHOTO_BYTES = 8 * 2**20
# Recordings a request may carry: each decodes to up to 30 s of float32 samples (1.9 MB),
# and runs alone through a speech model: 1.4-2.5 s of a core each for Whisper base, so three
# stay inside the service's 10 s request timeout (more come back as 413, not as a 504)
MAX_RECORDINGS = 3
# The most bytes an encoded recording may take on the wire: 30 s of 16 kHz mono 16-bit WAV
# (contract.audio.MAX_SAMPLES) is 960,044 bytes; the rest is room for metadata chunks
MAX_RECORDING_BYTES = 3 * 2**19


def utf8_text(value: Any) -> Any:
    """Text that can be stored and sent on: a lone surrogate (JSON's "\\ud800") is a str
    that no UTF-8 encoder takes, so the prediction log or Redis would fail on it (a 500)."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"not valid UTF-8 text: lone surrogate at position {exc.start}"
            ) from exc
    return value


UTF8 = BeforeValidator(utf8_text)  # on every string type, before its own checks


def _text(kind: Any, from_json: bool) -> Any:
    """A string type with the UTF-8 check, unless its values come from JSON bytes that
    jiter (model_validate_json) or orjson parsed: both refuse a lone surrogate themselves, a
    400 for the body (tests/unit/test_input_bounds.py), and the check is a Python call per
    string value (5 of the 21 ms that validating a 1000-row house_prices batch took)."""
    return kind if from_json else Annotated[kind, UTF8]


def _image_type(field: InputField, from_json: bool = False) -> Any:
    """Nested lists of uint8, or a base64 PNG of the same size; both become raw bytes."""
    height, width = field.shape or (0, 0)
    pixel = Annotated[int, Field(ge=0, le=255)]
    row = Annotated[list[pixel], Field(min_length=width, max_length=width)]
    nested = Annotated[list[row], Field(min_length=height, max_length=height)]
    png = _text(
        Annotated[
            str,
            Field(
                min_length=8,
                max_length=_png_length(height, width),
                description=f"base64-encoded {height}x{width} grey-scale PNG",
            ),
            AfterValidator(lambda text: _decode_png(text, height, width)),
        ],
        from_json,
    )

    def to_bytes(value: list[list[int]] | bytes) -> bytes:
        return value if isinstance(value, bytes) else bytes(p for r in value for p in r)

    return Annotated[nested | png, AfterValidator(to_bytes)]


def _photo_type(field: InputField, from_json: bool = False) -> Any:
    """A base64 PNG or JPEG of at most the field's height x width: the encoded bytes as sent
    with their RGB pixels and drift summary (contract.feeds.Photo)."""
    height, width = field.shape or (0, 0)
    return _text(
        Annotated[
            str,
            Field(
                min_length=8,
                max_length=4 * math.ceil(MAX_PHOTO_BYTES / 3),
                description=f"base64-encoded PNG or JPEG picture, at most {height}x{width}",
            ),
            AfterValidator(lambda text: _decode_photo(text, height, width)),
        ],
        from_json,
    )


def _decode_photo(text: str, height: int, width: int) -> Any:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or characters outside ASCII
        raise ValueError(f"not valid base64 ({exc})") from exc
    return decode_photo_bytes(raw, height, width)


def decode_photo_bytes(raw: bytes, height: int, width: int) -> Any:
    """A Photo (contract.feeds) of an encoded PNG or JPEG of at most height x width: its
    size is read from the header before anything is decoded; ValueError otherwise."""
    from PIL import Image

    from contract.feeds import Photo

    if len(raw) > MAX_PHOTO_BYTES:
        raise ValueError(f"picture of {len(raw)} bytes is over {MAX_PHOTO_BYTES}")
    if raw.startswith(PNG_SIGNATURE):
        kind, decoded = "PNG", _still_png(raw, height, width, exact=False)
    elif raw.startswith(JPEG_SIGNATURE):
        kind, decoded = "JPEG", raw
    else:
        start = f"they start {raw[:8]!r}"
        raise ValueError(f"base64 decodes to bytes that are not a PNG or JPEG picture ({start})")
    try:
        with Image.open(io.BytesIO(decoded), formats=(kind,)) as image:
            if image.width > width or image.height > height:  # the header, before decoding
                raise ValueError(
                    f"picture is {image.width}x{image.height}, larger than {width}x{height}"
                )
            if image.width < 1 or image.height < 1:
                raise ValueError("picture has no pixels")
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a valid {kind} ({type(exc).__name__}: {exc})") from exc
    return Photo.of(raw, pixels)


def _recording_type(field: InputField, from_json: bool = False) -> Any:
    """A base64 16 kHz mono 16-bit WAV or FLAC of at most the field's samples: the encoded
    bytes as sent with their samples and drift summary (contract.audio.Recording)."""
    (max_samples,) = field.shape or [0]
    seconds = max_samples / SAMPLE_RATE
    return _text(
        Annotated[
            str,
            Field(
                max_length=4 * math.ceil(MAX_RECORDING_BYTES / 3),
                description=f"base64-encoded 16 kHz mono 16-bit WAV or FLAC, at most {seconds:g} s",
            ),
            AfterValidator(lambda text: _decode_recording(text, max_samples)),
        ],
        from_json,
    )


def _decode_recording(text: str, max_samples: int) -> Recording:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or characters outside ASCII
        raise ValueError(f"not valid base64 ({exc})") from exc
    return decode_recording_bytes(raw, max_samples)


def decode_recording_bytes(raw: bytes, max_samples: int) -> Recording:
    """A Recording (contract.audio) of WAV or FLAC bytes by the contract's rules (16 kHz
    mono 16-bit, 1..max_samples samples, the length read before the samples), within the
    byte cap; ValueError otherwise."""
    if len(raw) > MAX_RECORDING_BYTES:
        raise ValueError(f"recording of {len(raw)} bytes is over {MAX_RECORDING_BYTES}")
    return read_recording(raw, max_samples)


def _png_length(height: int, width: int) -> int:
    """The most base64 characters a height x width PNG takes: checked before decoding."""
    # Generous: the widest pixels (16-bit RGBA, 8 bytes) stored uncompressed with a filter
    # byte a row, zlib's 5 bytes a stored block, 16 KiB for the other chunks an editor may
    # write (stripped unread); 4 base64 characters for 3 bytes. 28x28: 30,252 characters
    pixels = height * (1 + width * 8)
    stored = pixels + 5 * (pixels // 65_535 + 1)
    return 4 * math.ceil((stored + 16 * 1024) / 3)


def _decode_png(text: str, height: int, width: int) -> bytes:
    from PIL import Image

    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or characters outside ASCII
        raise ValueError(f"not valid base64 ({exc})") from exc
    pixels = _still_png(raw, height, width)
    try:
        return Image.open(io.BytesIO(pixels), formats=("PNG",)).convert("L").tobytes()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a valid PNG ({type(exc).__name__}: {exc})") from exc


def _still_png(raw: bytes, height: int, width: int, exact: bool = True) -> bytes:
    """The PNG's chunks that decoding reads, once its header says it is one still image of
    height x width (`exact`), or at most that; ValueError otherwise."""
    if len(raw) < 24 or not raw.startswith(PNG_SIGNATURE) or raw[12:16] != b"IHDR":
        start = f"they start {raw[:8]!r}"  # a GIF's or JPEG's header says which it is
        raise ValueError(f"base64 decodes to bytes that are not an image (PNG expected; {start})")
    size = struct.unpack_from(">II", raw, 16)
    if exact and size != (width, height):
        raise ValueError(f"image is {size[0]}x{size[1]}, expected {width}x{height}")
    if size[0] > width or size[1] > height:
        raise ValueError(f"picture is {size[0]}x{size[1]}, larger than {width}x{height}")
    kept, offset = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while offset + 8 <= len(raw):
        length, kind = struct.unpack_from(">I4s", raw, offset)
        end = offset + 12 + length  # length, type, data, CRC
        if kind == b"acTL":
            raise ValueError("animated PNG: send a single still image")
        if kind in PIXEL_CHUNKS:
            kept.append(raw[offset:end])
        offset = end
    return b"".join(kept)


def _series_type(field: InputField) -> Any:
    """A list of exactly `shape[0]` finite numbers within the field's bounds."""
    (length,) = field.shape or [0]
    value: Any = _number(field, float)
    return Annotated[list[value], Field(min_length=length, max_length=length)]


def _number(field: InputField, kind: type) -> Any:
    """A finite number within the field's bounds, or where the catalog sets none, within
    what the graph's tensor holds: float32's range (1e39 would be inf in the graph) and, for
    integers, 2^53 (exact as a double; 10**400 is no int64)."""
    limit = FLOAT32_MAX if kind is float else 2**53
    low = field.min if field.min is not None else -limit
    high = field.max if field.max is not None else limit
    finite = False if kind is float else None  # an int is finite; checking one overflowed
    return Annotated[kind, Field(ge=low, le=high, allow_inf_nan=finite)]


def _field_type(field: InputField, from_json: bool = False) -> Any:
    if field.type == "image":
        return _image_type(field, from_json)
    if field.type == "photo":
        return _photo_type(field, from_json)
    if field.type == "audio":
        return _recording_type(field, from_json)
    if field.type == "series":
        return _series_type(field)
    if field.type in ("float", "int"):
        base: Any = _number(field, float if field.type == "float" else int)
    elif field.type == "category" and field.values:
        base = _text(Literal[tuple(field.values)], from_json)
    else:  # a required text must say something (as on the OIP route)
        shortest = 1 if field.type == "text" and not field.nullable else 0
        text = Annotated[str, Field(min_length=shortest, max_length=MAX_TEXT)]
        base = _text(text, from_json)
    return base | None if field.nullable else base


def record_model(spec: ModelSpec, from_json: bool = False) -> type[BaseModel]:
    """A pydantic model for one input record of `spec`; unknown fields are rejected.
    `from_json`: for records parsed from JSON bytes by jiter or orjson only (`_text`)."""
    definitions: dict[str, Any] = {}
    for name, field in spec.fields.items():
        info = Field(None if field.nullable else ..., description=field.description or None)
        definitions[name] = (_field_type(field, from_json), info)
    title = "".join(part.title() for part in spec.key.split("_")) + "Record"
    config = ConfigDict(extra="forbid", title=title)
    return create_model(title, __config__=config, **definitions)


def records_limit(spec: ModelSpec, max_records: int) -> int:
    """Records a /predict request may carry: `max_records`, or MAX_PHOTOS for a photo
    model and MAX_RECORDINGS for a speech model (each decodes to megabytes, whatever its size
    on the wire)."""
    kinds = {f.type for f in spec.fields.values()}
    if "photo" in kinds:
        max_records = min(max_records, MAX_PHOTOS)
    if "audio" in kinds:
        max_records = min(max_records, MAX_RECORDINGS)
    return max_records


def encodes_text(spec: ModelSpec) -> bool:
    """Whether a record's text runs through a transformer (a field with `embedding: true`,
    which the catalog allows on text only): tens of ms of a core per review, a 10-review batch
    hundreds, too long for a service's event loop."""
    return any(f.embedding for f in spec.fields.values())


def request_model(spec: ModelSpec, record: type[BaseModel], max_records: int) -> type[BaseModel]:
    """The /predict body: `{"records": [...]}`, 1..max_records records."""
    records = Annotated[list[record], Field(min_length=1, max_length=max_records)]  # type: ignore[valid-type]
    title = record.__name__.removesuffix("Record") + "Request"
    config = ConfigDict(extra="forbid", title=title)
    return create_model(title, __config__=config, records=(records, ...))


def describe_errors(
    exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """pydantic errors as `{"field", "error", "expected"...}`: the field path a client can fix."""
    out = []
    for error in exc.errors(include_url=False, include_context=True):
        location = [*prefix, *error["loc"]]
        # A union reports each branch: name the field, not pydantic's branch labels
        location = [p for p in location if not (isinstance(p, str) and _is_branch_label(p))]
        entry: dict[str, Any] = {
            # a made-up key is echoed, but no longer than a value is
            "field": ".".join(_plain(p) if isinstance(p, str) else str(p) for p in location),
            "error": error["msg"],
        }
        if error.get("ctx") and error["type"] != "value_error":
            entry["expected"] = {k: _plain(v) for k, v in error["ctx"].items() if k != "error"}
        if error["type"] != "missing":
            entry["got"] = _plain(error.get("input"))
        out.append(entry)
    return out


# The metric label of an error that names no catalog field: a key the client made up, or
# the record itself (not an object). Client keys as labels would make unbounded series.
OTHER_FIELD = "?"


def metric_field(fields: Collection[str], path: str) -> str:
    """The label for `serving_invalid_records` of an error at `path` (records.<i>.<name>...):
    the catalog field's name, or OTHER_FIELD."""
    parts = path.split(".", 3)
    name = parts[2] if len(parts) > 2 else ""
    return name if name in fields else OTHER_FIELD


def _is_branch_label(part: str) -> bool:
    return part.startswith(("list[", "function-", "constrained-", "literal[")) or part == "str"


def _plain(value: Any) -> Any:
    """Something JSON can carry, short enough for an error message."""
    if isinstance(value, str) and not value.isascii():  # a lone surrogate, escaped: the
        value = value.encode(errors="backslashreplace").decode()  # answer's JSON must encode
    if isinstance(value, str | int | float | bool) or value is None:
        return value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def entity_model(spec: ModelSpec) -> type[BaseModel]:
    """One entity row of a Feast-backed entry: its join key plus the request-time fields."""
    assert spec.features is not None
    key = Annotated[str, Field(min_length=1, max_length=MAX_KEY, pattern=r"^[\w.:-]+$"), UTF8]
    definitions: dict[str, Any] = {
        spec.features.entity: (key, Field(..., description=f"the {spec.features.entity}"))
    }
    for name in spec.features.request:
        field = spec.fields[name]
        info = Field(None if field.nullable else ..., description=field.description or None)
        definitions[name] = (_field_type(field), info)
    title = "".join(part.title() for part in spec.key.split("_")) + "Entity"
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title), **definitions)
