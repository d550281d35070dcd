"""Hostile request bodies over real HTTP: a 4xx naming the problem, never a 5xx, a hang or a leak.

schemathesis (test_fuzz.py) generates requests from each service's OpenAPI document; this
corpus is what a schema cannot describe: bytes that are not JSON or not UTF-8, numbers no
double holds, nesting and sizes past every limit, binary tensors whose lengths lie. Every
model gets the cheap part on /predict and on OIP v2 (JSON and binary tensors); the
expensive part (60 MB bodies, 100k records, 100k levels of nesting) runs on three models.
After each request the service must still answer a valid /predict, and the RSS of its
process (and children) must not grow by more than RSS_GROWTH_BOUND over the corpus.
"""

import base64
import gzip
import json
import random
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import pytest

from contract.catalog import InputField
from services.api.tensors import serialize_bytes
from services.tools.examples import OIP_DATATYPES, as_records, as_tensors
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import Service, held_out

pytestmark = pytest.mark.slow

# A bound against hangs, not a performance target (those live in services/bench): even a
# 60 MB body is refused in well under a second on a laptop
LATENCY_BOUND_S = 10.0
RSS_GROWTH_BOUND = 300 * 2**20
HEAVY = ("fashion_cnn", "review_sentiment", "titanic")  # images, long text, many fields
PREDICT, INFER = "/predict", "/v2/models/{key}/infer"
JSON = {"Content-Type": "application/json"}
MIB = 2**20
RANDOM_KEYS = [  # unknown fields: echoed in the error, never a metric label
    "".join(chr(c) for c in random.Random(seed).sample(range(0x20, 0xD7FF), 24))
    for seed in range(3)
]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes | Iterable[bytes]  # an iterable is sent chunked, without Content-Length
    headers: dict[str, Any]
    codes: tuple[int, ...] = (400,)
    words: str = ""  # the answer names the problem with these


SLOT = "@HOSTILE@"


def slot(value: Any) -> Any:
    """`value` with its last scalar (a pixel, a series' last step, the value) as SLOT."""
    if isinstance(value, list) and value:
        return [*value[:-1], slot(value[-1])]
    return SLOT


def raw_record(record: dict[str, Any], name: str, token: bytes) -> bytes:
    """A /predict body with `token` verbatim in field `name` (JSON no encoder writes)."""
    body = orjson.dumps({"records": [record | {name: slot(record[name])}]})
    return body.replace(b'"%s"' % SLOT.encode(), token)


NUMBER_TOKENS = {  # what no double holds, what float32 does not, what JSON calls no number
    **{t.decode(): t for t in b"1e400 -1e400 NaN Infinity -Infinity 0x10 01 .5 +1".split()},
    "10**400": b"%d" % 10**400,
    "-10**400": b"-%d" % 10**400,
    "10**5000": b"1" + b"0" * 5000,  # past Python's 4,300-digit limit on int(str)
    "1e39": b"1e39",  # past float32's range: the graph would see inf
    "-1e39": b"-1e39",
    "10**39": b"%d" % 10**39,
}
# Valid numbers: a 200 where the field takes 0
HARMLESS_TOKENS = {t: t.encode() for t in ("-0", "-0.0", "1e-400")}


def wrong_types(field: InputField) -> list[Any]:
    """Values of the wrong JSON type for the field: strings for numbers and vice versa."""
    if field.type in ("float", "int"):
        return ["abc", "", [], {}, [1.0], {"value": 1}]
    if field.type == "image":
        return ["", 12, [[0] * 28] * 27 + [["a"] * 28], {"pixels": []}, [[None] * 28] * 28]
    if field.type == "series":
        return ["abc", 12, ["a"] * (field.shape or [1])[0], {}]
    if field.type == "photo":  # not base64, a GIF, a PNG header claiming 60000x60000
        huge = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60_000).to_bytes(4, "big") * 2
        return ["not base64!", 12, base64.b64encode(b"GIF89a" + bytes(40)).decode(),
                base64.b64encode(huge + bytes(40)).decode(), {"pixels": []}]  # fmt: skip
    if field.type == "audio":  # not base64, an MP3, a WAV header claiming 2**31 samples, none
        wav = b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80>\x00\x00"
        huge = wav + b"\x00}\x00\x00\x02\x00\x10\x00data\xfe\xff\xff\xff" + bytes(40)
        return ["not base64!", 12, base64.b64encode(b"ID3\x04" + bytes(40)).decode(),
                base64.b64encode(huge).decode(), "", {"samples": []}]  # fmt: skip
    return [12, 1.5, True, [], {}, ["a"]]


def predict_cases(key: str, record: dict[str, Any]) -> list[Case]:
    spec = CATALOG[key]
    good = orjson.dumps({"records": [record]})
    first = next(iter(spec.fields))
    numbers = [n for n, f in spec.fields.items() if f.type in ("float", "int")]
    unbounded = [n for n in numbers if spec.fields[n].max is None]  # only the token's size
    numeric = next(iter(unbounded + numbers), first)
    text = next((n for n, f in spec.fields.items() if f.type in ("text", "category")), first)
    cases = [
        Case("empty body", PREDICT, b"", JSON),
        Case("blank body", PREDICT, b" \r\n\t", JSON),
        *(
            Case(f"top level {b!r}", PREDICT, b, JSON, words="body")
            for b in (b"null", b"[]", b"1", b'"records"', b"true", b"[{}]")
        ),
        Case("truncated JSON", PREDICT, good[: len(good) // 2], JSON),
        Case("trailing garbage", PREDICT, good + b"x", JSON),
        Case("two documents", PREDICT, good + good, JSON),
        Case("records not a list", PREDICT, b'{"records": {"0": {}}}', JSON, words="records"),
        Case("no records", PREDICT, b'{"records": []}', JSON, words="records"),
        # three at most: a speech model's limit (more is a 413 before any record is read)
        Case("records of non-objects", PREDICT, b'{"records": [1, "a", null]}', JSON),
        Case("records of lists and booleans", PREDICT, b'{"records": [[], true]}', JSON),
        Case("duplicate top-level keys", PREDICT, b'{"records": [], ' + good[1:], JSON, (200,)),
        Case(
            "duplicate field",
            PREDICT,
            good.replace(b"[{", b"[{%s: null, " % orjson.dumps(first), 1),  # the last one counts
            JSON,
            (200,),
        ),
        *(
            Case(
                f"unknown field {i}",
                PREDICT,
                orjson.dumps({"records": [record | {k: 1}]}),
                JSON,
                words="Extra inputs",
            )
            for i, k in enumerate(RANDOM_KEYS)
        ),
        Case(
            "unknown top-level field",
            PREDICT,
            orjson.dumps({"records": [record], RANDOM_KEYS[0]: 1}),
            JSON,
        ),
        Case(
            "10k-character key",
            PREDICT,
            orjson.dumps({"records": [record | {"k" * 10_000: 1}]}),
            JSON,
        ),
        Case(
            "lone surrogate in a key", PREDICT, raw_record(record, first, b'1, "\\ud800": 1'), JSON
        ),
        Case("lone surrogate in a value", PREDICT, raw_record(record, text, b'"a\\udfffb"'), JSON),
        Case(
            "invalid UTF-8 in a key", PREDICT, raw_record(record, first, b'1, "\xff\xfe": 1'), JSON
        ),
        Case("invalid UTF-8 in a value", PREDICT, raw_record(record, text, b'"\xc3\x28"'), JSON),
        Case(
            "surrogate as UTF-8 bytes", PREDICT, raw_record(record, text, b'"\xed\xa0\x80"'), JSON
        ),
        Case("overlong UTF-8", PREDICT, raw_record(record, text, b'"\xc0\xaf"'), JSON),
        Case("UTF-16 body", PREDICT, good.decode().encode("utf-16"), JSON),
        Case("gzip body, undeclared", PREDICT, gzip.compress(good), JSON),
        Case(
            "form body",
            PREDICT,
            b"records=1&a=2",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        Case("XML body", PREDICT, b"<records><r/></records>", {"Content-Type": "application/xml"}),
        # The body is read as JSON whatever it is declared as (tritonclient declares nothing)
        Case("valid body as text/plain", PREDICT, good, {"Content-Type": "text/plain"}, (200, 415)),
        Case("valid body, no Content-Type", PREDICT, good, {}, (200, 415)),
        *(
            Case(f"{label} in {numeric}", PREDICT, raw_record(record, numeric, t), JSON)
            for label, t in NUMBER_TOKENS.items()
        ),
        *(
            Case(f"{label} in {numeric}", PREDICT, raw_record(record, numeric, t), JSON, (200, 400))
            for label, t in HARMLESS_TOKENS.items()
        ),
    ]
    for name in dict.fromkeys((numeric, text, first)):
        for value in wrong_types(spec.fields[name]):
            body = orjson.dumps({"records": [record | {name: value}]})
            cases.append(Case(f"{name}={value!r:.30}", PREDICT, body, JSON, words=name))
    return cases


ODD_INPUTS: tuple[Any, ...] = ([], {}, "x", [1], [None], None)
ODD_NAMES: tuple[Any, ...] = (None, 1, [])
ODD_IDS: tuple[Any, ...] = (12, None, [], {"a": 1})


def json_value(value: Any) -> Any:
    if isinstance(value, Picture):
        return base64.b64encode(value).decode()
    return value.decode() if isinstance(value, bytes) else value


def tensor(name: str, array: np.ndarray, **extra: Any) -> dict[str, Any]:
    data = [json_value(v) for v in array.reshape(-1).tolist()]
    return {
        "name": name,
        "datatype": OIP_DATATYPES[array.dtype.kind],
        "shape": list(array.shape),
        "data": data,
    } | extra


def infer(inputs: list[Any], **header: Any) -> bytes:
    try:
        return orjson.dumps({"inputs": inputs} | header)
    except TypeError:  # integers past 64 bits
        return json.dumps({"inputs": inputs} | header).encode()


def tensor_cases(key: str, feeds: dict[str, np.ndarray]) -> list[Case]:
    """OIP v2 JSON: the first input made hostile, the others valid."""
    (name, array), *others = feeds.items()
    rest = [tensor(n, a) for n, a in others]
    base = tensor(name, array)

    def swap(**change: Any) -> bytes:
        return infer([base | change, *rest])

    def raw(token: bytes) -> bytes:  # the last element of the data
        return swap(data=slot(base["data"])).replace(b'"%s"' % SLOT.encode(), token)

    numeric = array.dtype.kind != "O"
    missing = (200, 400) if CATALOG[key].fields[name].nullable else (400,)  # NaN: a null
    cases = [
        Case("OIP empty body", INFER, b"", JSON),
        *(Case(f"OIP top level {b!r}", INFER, b, JSON) for b in (b"null", b"[]", b"1", b'"x"')),
        Case("OIP inputs missing", INFER, b'{"outputs": []}', JSON, words="inputs"),
        *(
            Case(f"OIP inputs={v!r}", INFER, orjson.dumps({"inputs": v}), JSON, words="inputs")
            for v in ODD_INPUTS
        ),
        *(Case(f"OIP name={v!r}", INFER, swap(name=v), JSON) for v in (*ODD_NAMES, RANDOM_KEYS[1])),
        *(
            Case(f"OIP datatype={v!r}", INFER, swap(datatype=v), JSON, words="datatype")
            for v in ("FP99", "fp32", "", None, 5, "BF16")
        ),
        *(
            Case(f"OIP shape={v!r:.40}", INFER, swap(shape=v), JSON, words="shape")
            for v in (
                [-1, 1],
                [1, -1],
                [2**62, 2**62],
                [2**32, 2**32, 0],
                [10**30],
                [1.5],
                [True],
                ["1"],
                [1] * 9,
                "1",
                None,
                [[1]],
            )
        ),
        Case("OIP shape [0]", INFER, swap(shape=[0, *list(array.shape[1:])], data=[]), JSON),
        Case("OIP shape 10**400", INFER, swap(shape="@").replace(b'"@"', b"[%d]" % 10**400), JSON),
        Case("OIP scalar shape []", INFER, swap(shape=[], data=base["data"][:1]), JSON),
        Case("OIP more data than shape", INFER, swap(data=base["data"] * 2), JSON),
        Case("OIP less data than shape", INFER, swap(data=base["data"][:-1]), JSON),
        Case("OIP data not a list", INFER, swap(data={"0": 1}), JSON),
        Case("OIP data nested 500 deep", INFER, raw(b"[" * 500 + b"1" + b"]" * 500), JSON),
        Case("OIP ragged data", INFER, swap(data=[[1], [1, 2]]), JSON),
        Case("OIP parameters a list", INFER, swap(parameters=[1]), JSON, words="parameters"),
        Case("OIP request parameters a string", INFER, infer([base, *rest], parameters="x"), JSON),
        *(
            Case(f"OIP id={v!r}", INFER, infer([base, *rest], id=v), JSON, words="id")
            for v in ODD_IDS
        ),
        Case(
            "OIP id lone surrogate",
            INFER,
            infer([base, *rest], id="@").replace(b'"@"', b'"\\ud800"'),
            JSON,
        ),
        Case("OIP name lone surrogate", INFER, swap(name="@").replace(b'"@"', b'"\\udc00"'), JSON),
        Case("OIP invalid UTF-8 name", INFER, swap(name="@").replace(b'"@"', b'"\xff"'), JSON),
        *(
            Case(f"OIP outputs={v!r}", INFER, infer([base, *rest], outputs=v), JSON, words="output")
            for v in ("x", {"a": 1}, [None], [1], [{"name": RANDOM_KEYS[2]}])
        ),
        Case("OIP duplicate input", INFER, infer([base, base, *rest]), JSON, (200, 400)),
        Case("OIP unknown extra input", INFER, infer([base, *rest, base | {"name": "zz"}]), JSON),
        Case(
            "OIP unsupported encoding",
            INFER,
            infer([base, *rest]),
            JSON | {"Content-Encoding": "br"},
            words="Content-Encoding",
        ),
        Case(
            "OIP invalid gzip",
            INFER,
            b"\x1f\x8b\x08\x00garbage",
            JSON | {"Content-Encoding": "gzip"},
        ),
        Case(
            "OIP gzip bomb",
            INFER,
            gzip.compress(b" " * 64 * MIB, 1),
            JSON | {"Content-Encoding": "gzip"},
            (413,),
        ),
        Case(
            "OIP deflate bomb",
            INFER,
            zlib.compress(b"[" * 64 * MIB, 1),
            JSON | {"Content-Encoding": "deflate"},
            (413,),
        ),
        Case(
            "OIP version ../admin",
            "/v2/models/{key}/versions/..%2Fadmin/infer",
            infer([base, *rest]),
            JSON,
            (404,),
        ),
        Case("OIP model %ff", "/v2/models/%ff/infer", infer([base, *rest]), JSON, (404,)),
    ]
    odd = {t.decode(): t for t in (b"1", b"1e400", b"null", b"true", b"[]", b"{}")}  # for BYTES
    strings = {"\\ud800": b'"\\ud800"', "0xff": b'"\xff"', "ED A0 80": b'"\xed\xa0\x80"'}
    tokens = (NUMBER_TOKENS if numeric else odd) | strings
    cases += [
        Case(f"OIP data [..., {label}]", INFER, raw(t), JSON, missing if label == "NaN" else (400,))
        for label, t in tokens.items()
    ]
    harmless = HARMLESS_TOKENS if numeric else {}
    return cases + [
        Case(f"OIP data [..., {label}]", INFER, raw(t), JSON, (200, 400))
        for label, t in harmless.items()
    ]


def binary(array: np.ndarray) -> bytes:
    if array.dtype.kind == "O":
        return serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()  # little-endian: x86 and ARM alike


def binary_body(feeds: dict[str, np.ndarray], **first: Any) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of the binary tensor extension; `first` overrides the first
    input's `blob` (raw bytes), `size` (binary_data_size) or `datatype`."""
    inputs, blobs = [], []
    for index, (name, array) in enumerate(feeds.items()):
        change = first if index == 0 else {}
        blob = change.get("blob", binary(array))
        entry = tensor(name, array)
        del entry["data"]
        entry["datatype"] = change.get("datatype", entry["datatype"])
        inputs.append(entry | {"parameters": {"binary_data_size": change.get("size", len(blob))}})
        blobs.append(blob)
    return infer(inputs), b"".join(blobs)


def binary_case(
    name: str, body: tuple[bytes, bytes], length: Any = None, codes: tuple[int, ...] = (400,)
) -> Case:
    head, tail = body
    length = str(len(head)) if length is None else length
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": length,
    }
    return Case(name, INFER, head + tail, headers, codes)


BYTES_ODD = (  # serialised BYTES tensors that lie, or hold what no text field takes
    b"\x05\x00",  # a truncated length prefix
    b"\xff\xff\xff\xffab",  # a 4 GiB element in 2 bytes
    b"\x02\x00\x00\x00\xff\xfe",  # invalid UTF-8
    b"\x03\x00\x00\x00\xed\xa0\x80",  # a surrogate, UTF-8 encoded
    b"\x01\x00\x00\x00a\x01\x00\x00\x00b",  # two elements for one
    b"",  # none for one
)


def binary_cases(feeds: dict[str, np.ndarray]) -> list[Case]:
    head, tail = body = binary_body(feeds)
    size = len(binary(next(iter(feeds.values()))))
    lengths = (  # of Inference-Header-Content-Length; "²" and "¹" pass str.isdigit()
        *("-1", "abc", "1e3", "+10", "0x10", "0", "", "99999999999999999999999"),
        str(len(head + tail) + 1),
        b"\xb2",
        b"\xb9",
        "\u0663".encode(),
    )
    nan_head = head.replace(b'"shape"', b'"x": NaN, "shape"', 1)
    return [
        binary_case("binary valid", body, codes=(200,)),  # the baseline: binary works at all
        *(binary_case(f"header length {v!r}", body, v) for v in lengths),
        binary_case("header length short", body, str(len(head) - 5)),
        binary_case("header length into the tensors", body, str(len(head) + 1)),
        binary_case("truncated binary section", (head, tail[:-1])),
        binary_case("binary section missing", (head, b"")),
        binary_case("extra bytes after the tensors", (head, tail + b"\0" * 4096)),
        *(
            binary_case(f"binary_data_size {v!r:.30}", binary_body(feeds, size=v))
            for v in (-1, size + 1, size - 1, 0, 2**62, 10**30, "8", 1.5, True, None)
        ),
        *(
            binary_case(f"BYTES {raw[:12]!r}", binary_body(feeds, blob=raw, datatype="BYTES"))
            for raw in BYTES_ODD
        ),
        binary_case("NaN in the header", (nan_head, tail), codes=(200, 400)),
    ]


def heavy_cases(key: str, record: dict[str, Any], feeds: dict[str, np.ndarray]) -> list[Case]:
    """Past every size limit: 60 MB (declared and chunked), 100k records, 100k levels."""
    big = b'{"records": [{"x": "' + b"a" * 60 * MIB + b'"}]}'
    chunks = (b'{"records": [', *(b'{"x": "' + b"a" * MIB + b'"},',) * 60, b"{}]}")
    (name, array), *_ = feeds.items()
    rows = min(100_000, 8 * MIB // len(binary(array)))  # over 1,000, under the body limit
    batch = binary_body({name: np.repeat(array[:1], rows, axis=0)})
    deep = b"[" * 100_000 + b"]" * 100_000
    # 100k records where that is a body the service parses (titanic's: 12 MB), else 1,001:
    # 100k images would be a 200 MB body the client spends seconds sending into a 413
    count = 100_000 if len(orjson.dumps(record)) < 160 else 1_001
    valid = orjson.dumps({"records": [record] * count})
    return [
        Case("60 MB with Content-Length", PREDICT, big, JSON, (413,), "over"),
        Case("60 MB chunked", PREDICT, chunks, JSON, (413,), "over"),
        Case("OIP 60 MB with Content-Length", INFER, big, JSON, (413,), "over"),
        Case("OIP 60 MB chunked", INFER, chunks, JSON, (413,), "over"),
        Case(
            "100k empty records",
            PREDICT,
            b'{"records": [' + b"{}," * 99_999 + b"{}]}",
            JSON,
            (413,),
            "max_records",
        ),
        Case(f"{count} valid records", PREDICT, valid, JSON, (413,), "over"),
        binary_case(f"OIP batch of {rows}", batch, codes=(413,)),
        Case("100k levels in records", PREDICT, b'{"records": ' + deep + b"}", JSON),
        Case("100k levels in a field", PREDICT, raw_record(record, name, deep), JSON),
        Case("100k objects deep", PREDICT, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, JSON),
        Case("OIP 100k levels", INFER, b'{"inputs": ' + deep + b"}", JSON),
        Case(
            "OIP 100k levels in data",
            INFER,
            infer([tensor(name, array) | {"data": "@"}]).replace(b'"@"', deep),
            JSON,
        ),
        Case("OIP 100k levels, NaN header", INFER, b'{"x": NaN, "inputs": ' + deep + b"}", JSON),
    ]


def entity_cases(key: str) -> list[Case]:
    """Feast-backed models: entity keys instead of records."""
    features = CATALOG[key].features
    if features is None:
        return []
    ids, entity = f"{features.entity}s", features.entity
    bodies = [
        b'{"%s": ["\\ud800"]}' % ids.encode(),
        b'{"%s": ["\xff"]}' % ids.encode(),
        b'{"%s": [1e400]}' % ids.encode(),
        b'{"%s": [%d]}' % (ids.encode(), 10**400),
        b'{"%s": "x"}' % ids.encode(),
        b'{"%s": [null, [], {}]}' % ids.encode(),
        b'{"entities": [{"%s": "\\udc00"}]}' % entity.encode(),
        b'{"entities": [1, "x"]}',
        orjson.dumps({ids: ["k" * 10_000]}),
        orjson.dumps({ids: ["1"], "entities": [{entity: "1"}]}),
    ]
    cases = [Case(f"entities {b[:40]!r}", PREDICT, b, JSON, (400, 404, 413)) for b in bodies]
    key_tensor = {"name": entity, "datatype": "BYTES", "shape": [1], "data": ["x"]}
    changes: tuple[dict[str, Any], ...] = ({"shape": []}, {"shape": [1, 2], "data": ["a", "b"]})
    for change in (*changes, {"data": [1]}):
        cases.append(Case(f"OIP {entity} {change}", INFER, infer([key_tensor | change]), JSON))
    for raw in (b"\xff", b"\xed\xa0\x80", b"", b"k" * 10_000):
        blob = serialize_bytes(np.array([raw], dtype=object))
        body = binary_body({entity: np.array(["x"], dtype=object)}, blob=blob)
        cases.append(binary_case(f"OIP binary {entity} {raw[:12]!r}", body))
    return cases


def rss(service: Service) -> int:
    """Resident memory of the service's process and its children (workers), in bytes."""
    assert service.process is not None
    process = psutil.Process(service.process.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def error_of(response: httpx.Response) -> str:
    """The `error` of a JSON error answer ("" if none)."""
    if response.headers.get("content-type") != "application/json":
        return ""
    return str(response.json().get("error") or "")


def check(client: httpx.Client, key: str, case: Case, valid: bytes | None) -> list[str]:
    """What is wrong with the answer to `case` (nothing: an empty list), then whether the
    service still answers: a valid /predict after it (`valid`), or its /readyz (None)."""
    started = time.monotonic()
    try:
        response = client.post(case.path.format(key=key), content=case.body, headers=case.headers)
    except httpx.TransportError as exc:
        return [f"no answer ({type(exc).__name__}: {exc})"]
    seconds, status = time.monotonic() - started, response.status_code
    problems = []
    if status not in case.codes:
        problems.append(f"{status}, expected {case.codes}: {response.text[:300]}")
    if status >= 400 and (not error_of(response) or case.words not in response.text):
        problems.append(
            f"{status} does not name the problem ({case.words!r}): {response.text:.300}"
        )
    if seconds > LATENCY_BOUND_S:
        problems.append(f"answered in {seconds:.1f} s")
    route = "/readyz" if valid is None else PREDICT
    try:
        after = (
            client.get(route) if valid is None else client.post(route, content=valid, headers=JSON)
        )
    except httpx.TransportError as exc:
        return [*problems, f"then {route} got no answer ({type(exc).__name__}: {exc})"]
    if after.status_code != 200:
        problems.append(f"then {route} got {after.status_code}: {after.text[:300]}")
    return problems


def follow_up_stride(key: str) -> int:
    """How often a valid /predict follows a hostile request (the others: /readyz). Every
    time, except where a prediction costs a second of CPU whatever its size (a recording:
    Whisper decodes 30 s windows), where every tenth and the last do."""
    return 10 if any(f.type == "audio" for f in CATALOG[key].fields.values()) else 1


def run_corpus(service: Service, cases: list[Case], record: dict[str, Any]) -> None:
    """Every case checked; the service's memory before and after, printed and bounded."""
    valid = orjson.dumps({"records": [record]})
    with httpx.Client(base_url=service.url, timeout=60) as client:
        client.post(PREDICT, content=valid, headers=JSON)  # warm: first-request allocations
        before = rss(service)
        stride = follow_up_stride(service.key)
        problems = [
            f"{c.name}: {p}"
            for i, c in enumerate(cases, 1)
            for p in check(
                client, service.key, c, valid if i % stride == 0 or i == len(cases) else None
            )
        ]
        after = rss(service)
    figures = (
        f"{service.key}: {len(cases)} hostile requests, RSS {before / MIB:.0f} MiB -> "
        f"{after / MIB:.0f} MiB ({(after - before) / MIB:+.0f} MiB)"
    )
    print(figures)
    assert not problems, figures + "\n" + "\n".join(problems)
    assert after - before < RSS_GROWTH_BOUND, figures


class Picture(bytes):
    """An encoded picture (or recording) in an OIP tensor: base64 text in JSON, its raw bytes
    in binary."""


def valid_inputs(trained: Path, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One held-out row: as a /predict record and as OIP's input tensors."""
    frame = held_out(trained, key, 1)
    (record,) = as_records(frame, CATALOG[key])
    feeds = as_tensors(frame, CATALOG[key], binary=True)
    for name, field in CATALOG[key].fields.items():
        if field.type in ("photo", "audio"):
            feeds[name] = np.array([Picture(v) for v in feeds[name]], dtype=object)
    return record, feeds


@pytest.mark.parametrize("key", KEYS)
def test_hostile_bodies_get_a_4xx_naming_the_problem(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    record, feeds = valid_inputs(trained, key)
    cases = [
        *predict_cases(key, record),
        *entity_cases(key),
        *tensor_cases(key, feeds),
        *binary_cases(feeds),
    ]
    run_corpus(services[key], cases, record)
    metrics = httpx.get(services[key].url + "/metrics").text
    assert not [k for k in RANDOM_KEYS if k in metrics], "a made-up field became a metric label"


@pytest.mark.parametrize("key", HEAVY)
def test_bodies_past_every_limit_get_a_4xx(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    record, feeds = valid_inputs(trained, key)
    run_corpus(services[key], heavy_cases(key, record, feeds), record)
