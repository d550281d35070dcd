"""Hostile inputs meet the request models: bounded work, and a 400 that names the field.

Images: a capped base64 length, the size read from the PNG header before anything is
decoded, only the chunks that decoding reads handed to Pillow. Strings: text that UTF-8
cannot encode (a lone surrogate) is refused where it is validated, not when it is logged.
"""

import base64
import contextlib
import io
import random
import struct
import warnings
import zlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from services.api.entities import EntityRequests
from services.api.errors import InputError
from services.api.inputs import (
    _decode_png,
    _png_length,
    describe_errors,
    entity_model,
    record_model,
)
from services.api.responses import error_response
from services.api.telemetry import ServiceMetrics
from services.tools.examples import to_png
from tests.conftest import CATALOG, KEYS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FEAST_KEYS = [key for key in KEYS if CATALOG[key].features]
STRING_FIELDS = [
    (key, name)
    for key in KEYS
    for name, field in CATALOG[key].fields.items()
    if field.type in ("text", "category")
]
PIXELS = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encoded(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **({"format": "PNG"} | options))
    return buffer.getvalue()


def with_chunks(png: bytes, *chunks: bytes) -> str:
    """The PNG with `chunks` after its header (IHDR), as base64."""
    return base64.b64encode(png[:33] + b"".join(chunks) + png[33:]).decode()


def header_only(width: int, height: int) -> str:
    """A PNG that claims width x height: a header and a few rows of zeros."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    rows = chunk(b"IDAT", zlib.compress(b"\0" * (1 + width) * 4))
    return base64.b64encode(PNG_SIGNATURE + header + rows + chunk(b"IEND", b"")).decode()


def errors_of(model: type[BaseModel], value: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(value)
    errors = describe_errors(caught.value, ("records", 0))
    orjson.dumps(errors)  # what the answer's body will be: it must encode
    return errors


def image_errors(image: str) -> list[str]:
    """The image field's errors, without the nested-lists branch's "valid list"."""
    errors = errors_of(record_model(CATALOG["fashion_cnn"]), {"image": image})
    assert {e["field"] for e in errors} == {"records.0.image"}
    return [e["error"] for e in errors if "valid list" not in e["error"]]


def test_the_base64_length_is_capped_before_decoding() -> None:
    cap = _png_length(28, 28)
    (error,) = image_errors("A" * (cap + 4))
    assert error == f"String should have at most {cap} characters"
    # generous: the widest PNG, stored uncompressed, with an editor's metadata, still fits
    widest = np.arange(28 * 28 * 4, dtype=np.uint16).reshape(28, 28, 4) * 16
    png = encoded(Image.fromarray(widest.astype(np.uint8), "RGBA"), compress_level=0)
    metadata = chunk(b"tEXt", b"Software\0" + b"x" * 4000)
    assert len(with_chunks(png, metadata)) < cap < 64 * 1024


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (10_000, 10_000), (28, 27)])
def test_the_size_is_read_from_the_header_before_any_pixel(width: int, height: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either: Pillow never sees it
        (error,) = image_errors(header_only(width, height))
    assert error == f"Value error, image is {width}x{height}, expected 28x28"


def test_text_chunks_are_not_inflated() -> None:
    """A zTXt chunk of 2 MB of text (Pillow's MAX_TEXT_CHUNK is 1 MB) and twenty of 1 MB
    each (under it: Pillow inflates them all, 0.1 s an image) are metadata: never read."""
    png = to_png(PIXELS)
    raw = base64.b64decode(png)
    bomb = chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * 2_000_000, 9))
    many = [chunk(b"zTXt", b"k%d\0\0" % i + zlib.compress(b"a" * 999_000, 9)) for i in range(20)]
    model = record_model(CATALOG["fashion_cnn"])
    for stuffed in (with_chunks(raw, bomb), with_chunks(raw, *many)):
        assert model.model_validate({"image": stuffed}).image == PIXELS.tobytes()  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["GIF", "JPEG", "BMP", "TIFF", "WEBP"])
def test_other_formats_are_refused(kind: str) -> None:
    image = base64.b64encode(encoded(Image.fromarray(PIXELS), format=kind)).decode()
    (error,) = image_errors(image)
    assert "not an image (PNG expected; they start b'" in error


def test_animated_pngs_are_refused() -> None:
    frames = [Image.fromarray(PIXELS), Image.fromarray(255 - PIXELS)]
    png = encoded(frames[0], save_all=True, append_images=frames[1:])
    (error,) = image_errors(base64.b64encode(png).decode())
    assert error == "Value error, animated PNG: send a single still image"


def test_corrupt_pixels_are_a_value_error() -> None:
    raw = bytearray(base64.b64decode(to_png(PIXELS)))
    raw[60] ^= 0xFF  # inside IDAT: the CRC no longer matches
    (error,) = image_errors(base64.b64encode(bytes(raw)).decode())
    assert error.startswith("Value error, not a valid PNG (")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_every_png_mode_becomes_grey_levels(mode: str) -> None:
    png = encoded(Image.fromarray(PIXELS).convert(mode))
    pixels = record_model(CATALOG["fashion_cnn"]).model_validate(
        {"image": base64.b64encode(png).decode()}
    )
    assert len(pixels.image) == 28 * 28  # type: ignore[attr-defined]


def test_mangled_pngs_raise_value_errors_only() -> None:
    """Any other exception out of a validator would be a 500."""
    rng = random.Random(20261123)
    seeds = [base64.b64decode(to_png(PIXELS)), encoded(Image.fromarray(PIXELS).convert("RGBA"))]
    for _ in range(3000):
        raw = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            if rng.random() < 0.6:
                raw[at] = rng.randrange(256)
            else:
                del raw[at : at + rng.randint(1, 40)]
        with contextlib.suppress(ValueError):
            _decode_png(base64.b64encode(bytes(raw)).decode(), 28, 28)


@pytest.mark.parametrize(("key", "name"), STRING_FIELDS)
def test_lone_surrogates_are_refused_in_every_string_field(key: str, name: str) -> None:
    errors = errors_of(record_model(CATALOG[key]), {name: "ok \ud800 ok"})
    (error,) = [e for e in errors if e["field"] == f"records.0.{name}"]
    assert error["error"] == "Value error, not valid UTF-8 text: lone surrogate at position 3"
    assert error["got"] == "ok \\ud800 ok"  # echoed escaped: orjson cannot encode the str


@pytest.mark.parametrize(("key", "name"), STRING_FIELDS)
def test_records_parsed_from_json_leave_lone_surrogates_to_the_parser(key: str, name: str) -> None:
    """/predict's models skip the per-string check: jiter refuses the escape itself, the
    same contract otherwise (schema, and what a valid or non-ASCII record becomes)."""
    spec = CATALOG[key]
    checked, from_json = record_model(spec), record_model(spec, from_json=True)
    assert from_json.model_json_schema() == checked.model_json_schema()
    with pytest.raises(ValidationError, match="json_invalid"):
        from_json.model_validate_json(b'{"%s": "ok \\ud800 ok"}' % name.encode())
    field = spec.fields[name]
    text = field.values[0].encode() if field.values else rb"caf\u00e9 \ud83d\ude00"  # valid
    body = b'{"%s": "%s"}' % (name.encode(), text)

    def outcome(model: type[BaseModel]) -> Any:  # the other fields: missing, or their default
        try:
            return model.model_validate_json(body).model_dump()
        except ValidationError as exc:
            return exc.errors()

    found, value = outcome(from_json), orjson.loads(body)[name]
    assert found == outcome(checked)
    if isinstance(found, dict):  # this field's value is valid: kept as decoded
        assert found[name] == value
    else:
        assert all(error["loc"] != (name,) for error in found)


@pytest.mark.parametrize("key", FEAST_KEYS)
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("\udc00C0001", "not valid UTF-8 text: lone surrogate at position 0"),
        ("C" * 129, "at most 128 characters"),
        ("C 1", "should match pattern"),
    ],
)
def test_entity_keys_are_short_valid_ids(key: str, value: str, words: str) -> None:
    spec = CATALOG[key]
    assert spec.features is not None
    row = {spec.features.entity: value} | {name: 1 for name in spec.features.request}
    errors = errors_of(entity_model(spec), row)
    assert [e["field"] for e in errors] == [f"records.0.{spec.features.entity}"]
    assert words in errors[0]["error"]
    row[spec.features.entity] = "C0001é"  # any other Unicode word character is a key
    assert entity_model(spec).model_validate(row)


@pytest.mark.parametrize("key", FEAST_KEYS)
def test_entity_rows_with_lone_surrogates_are_a_400_that_encodes(key: str) -> None:
    """The OIP route reads its JSON header with json.loads when orjson refuses it (for NaN),
    and json.loads keeps "\\ud800": its entity rows come here as such strs. The error's
    echo of the key was a TypeError in orjson.dumps, a 500."""
    spec = CATALOG[key]
    assert spec.features is not None
    online = SimpleNamespace(request_fields=list(spec.features.request))
    entities = EntityRequests(spec, online, ServiceMetrics(spec.task))  # type: ignore[arg-type]
    row = {spec.features.entity: "\ud800"} | {name: 1 for name in spec.features.request}
    with pytest.raises(InputError) as caught:
        entities.parse({"entities": [row]}, max_records=10)
    assert caught.value.status == 400
    (error,) = caught.value.detail
    assert error["field"] == f"entities.0.{spec.features.entity}"
    assert "lone surrogate at position 0" in error["error"]
    answer = error_response(400, caught.value.message, caught.value.detail)
    assert orjson.loads(answer.body)["detail"][0]["got"] == "\\ud800"


def test_an_unknown_key_with_a_lone_surrogate_is_echoed_escaped() -> None:
    errors = errors_of(record_model(CATALOG["titanic"]), {"made\udc00up": 1})
    assert {"field": "records.0", "got": "made\\udc00up"}.items() <= errors[0].items()


@pytest.mark.parametrize(
    "record", [b'{"name": "\\ud800"}', b'{"name": "\\udc00x"}', b'{"name": "\xff"}']
)
def test_lone_surrogates_and_bad_bytes_are_not_json_to_the_record_parsers(record: bytes) -> None:
    """Both parsers of /predict bodies refuse them outright (a 400 for the body): jiter in
    model_validate_json, orjson behind it. The validators above are for every other way in."""
    with pytest.raises(orjson.JSONDecodeError, match=r"surrogate|UTF-8"):
        orjson.loads(b'{"records": [' + record + b"]}")
    with pytest.raises(ValidationError, match="json_invalid"):
        record_model(CATALOG["titanic"]).model_validate_json(record)
