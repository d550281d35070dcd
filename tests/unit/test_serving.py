"""Serving code without servers: request models, OIP tensors, the checksummed cache, routing."""

import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from contract.catalog import InputField
from services.api import store as store_module
from services.api.inputs import (
    OTHER_FIELD,
    describe_errors,
    metric_field,
    record_model,
    request_model,
)
from services.api.routing import bucket
from services.api.store import Artifact, ArtifactRefused, Checksums, ModelStore, sha256_of
from services.api.tensors import (
    TensorError,
    decompress,
    encode_outputs,
    read_input,
    serialize_bytes,
    split_body,
    to_feed,
)
from services.tools.examples import to_png
from tests.conftest import CATALOG, KEYS


@pytest.mark.parametrize("key", KEYS)
def test_record_model_has_every_catalog_field(key: str) -> None:
    model = record_model(CATALOG[key])
    assert set(model.model_fields) == set(CATALOG[key].fields)
    required = {n for n, f in CATALOG[key].fields.items() if not f.nullable}
    assert set(model.model_json_schema().get("required", [])) == required


def test_constraints_come_from_the_catalog() -> None:
    titanic = record_model(CATALOG["titanic"])
    with pytest.raises(ValidationError) as caught:
        titanic.model_validate({"pclass": 4, "name": "A", "sex": "other", "sibsp": 0, "parch": 0})
    fields = {e["field"]: e for e in describe_errors(caught.value)}
    assert fields["pclass"]["expected"] == {"le": 3.0}
    assert fields["sex"]["expected"] == {"expected": "'female' or 'male'"}
    search = record_model(CATALOG["semantic_search"])  # a required text must say something
    with pytest.raises(ValidationError) as caught:
        search.model_validate({"query": ""})
    assert describe_errors(caught.value)[0]["expected"] == {"min_length": 1}
    assert search.model_validate({"query": "tea"}).query == "tea"  # type: ignore[attr-defined]


def test_errors_name_the_record_and_the_field() -> None:
    spec = CATALOG["churn"]
    request = request_model(spec, record_model(spec), max_records=2)
    with pytest.raises(ValidationError) as caught:
        request.model_validate({"records": [{"tenure": "long"}]})
    assert any(e["field"] == "records.0.tenure" for e in describe_errors(caught.value))


def test_made_up_keys_are_no_metric_labels_and_are_echoed_short() -> None:
    """Only catalog field names label serving_invalid_records: random keys in bodies would
    otherwise make a new Prometheus series each."""
    spec = CATALOG["churn"]
    request = request_model(spec, record_model(spec), max_records=2)
    made_up = "k" * 5000
    with pytest.raises(ValidationError) as caught:
        request.model_validate({"records": [{"tenure": "long", made_up: 1}, 7]})
    errors = describe_errors(caught.value)
    labels = {metric_field(spec.fields, e["field"]) for e in errors}
    assert {"tenure", OTHER_FIELD} <= labels <= {*spec.fields, OTHER_FIELD}  # missing ones too
    assert max(len(e["field"]) for e in errors) < 100  # the 5,000-character key, cut
    assert metric_field(spec.fields, "records.3.tenure") == "tenure"
    assert metric_field(spec.fields, "records.3") == OTHER_FIELD
    assert metric_field(spec.fields, "body") == OTHER_FIELD


def test_images_as_lists_or_png_become_the_same_bytes() -> None:
    model = record_model(CATALOG["fashion_cnn"])
    pixels = np.arange(784, dtype=np.uint8).reshape(28, 28)
    as_lists = model.model_validate({"image": pixels.tolist()}).image  # type: ignore[attr-defined]
    as_png = model.model_validate({"image": to_png(pixels)}).image  # type: ignore[attr-defined]
    assert as_lists == as_png == pixels.tobytes()


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ([[0] * 28] * 27, "at least 28"),
        ([[0] * 28] * 27 + [[0] * 27], "at least 28"),
        ([[256] * 28] * 28, "less than or equal to 255"),
        ("bm90IGFuIGltYWdl", "not an image"),
        ("%%%%%%%%", "not valid base64"),
    ],
)
def test_bad_images_are_explained(image: object, words: str) -> None:
    model = record_model(CATALOG["fashion_cnn"])
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"image": image})
    assert any(words in e["error"] for e in describe_errors(caught.value))


def test_png_of_the_wrong_size_is_refused() -> None:
    model = record_model(CATALOG["fashion_cnn"])
    with pytest.raises(ValidationError, match="expected 28x28"):
        model.model_validate({"image": to_png(np.zeros((10, 12), np.uint8))})


def test_json_and_binary_inputs_read_alike() -> None:
    values = np.array([[1.5], [np.nan]], np.float32)
    binary = values.tobytes()
    spec = {"name": "x", "datatype": "FP32", "shape": [2, 1]}
    from_binary, offset = read_input(spec | {"parameters": {"binary_data_size": 8}}, binary, 0)
    from_json, _ = read_input(spec | {"data": [1.5, None]}, b"", 0)
    assert offset == 8
    np.testing.assert_array_equal(from_binary, values)
    np.testing.assert_array_equal(from_json, values)


def test_bytes_tensors_round_trip() -> None:
    array = np.array([b"a", "é".encode(), b""], dtype=object)
    spec = {"name": "t", "datatype": "BYTES", "shape": [3], "parameters": {}}
    raw = serialize_bytes(array)
    read, _ = read_input(spec | {"parameters": {"binary_data_size": len(raw)}}, raw, 0)
    assert read.tolist() == [b"a", "é".encode(), b""]
    assert struct.unpack_from("<I", raw)[0] == 1


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "unknown datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}, "needs 2 elements"),
        ({"name": "x", "datatype": "FP32", "shape": "2", "data": [1]}, "shape must be"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}, "must be numbers"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "neither data"),
        # int64's product of these wraps to 0: an empty tensor would have passed
        ({"name": "x", "datatype": "FP32", "shape": [2**62, 2**62], "data": []}, "over the limit"),
        ({"name": "x", "datatype": "FP32", "shape": [10**12], "data": []}, "over the limit"),
        ({"name": "x", "datatype": "FP32", "shape": [1] * 9, "data": [1]}, "over the limit"),
        ({"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}, "shape must be"),
        ({"name": "x", "datatype": "INT64", "shape": [2], "data": [1, None]}, "no INT64 value"),
        ({"name": "x", "datatype": "INT64", "shape": [1], "data": [2**70]}, "outside INT64"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1e300]}, "outside INT32"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "parameters": [1]}, "must be an object"),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "parameters": {"binary_data_size": "8"},
            },
            "binary_data_size must be",
        ),
    ],
)
def test_malformed_tensors_are_named(spec: dict[str, object], words: str) -> None:
    with pytest.raises(TensorError, match=words) as caught:
        read_input(spec, b"", 0)
    assert caught.value.field == "x"


def test_an_input_without_a_string_name_is_named() -> None:
    with pytest.raises(TensorError, match="name must be a string") as caught:
        read_input({"name": {"a": 1}, "datatype": "FP32", "shape": [1], "data": [1]}, b"", 0)
    assert caught.value.field == "inputs"


@pytest.mark.parametrize(
    "body",
    [b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"a":' * 5000 + b"1" + b"}" * 5000],
)
def test_deeply_nested_bodies_are_a_named_error(body: bytes) -> None:
    """orjson stops at 1,024 levels; the lenient reader (NaN) behind it must not raise
    RecursionError (it was a 500)."""
    with pytest.raises(TensorError, match="not valid JSON") as caught:
        split_body(body, None)
    assert caught.value.field == "body"


def test_feeds_are_checked_against_their_field() -> None:
    age = InputField(type="float", nullable=False, min=0, max=100)
    with pytest.raises(TensorError, match="above 100"):
        to_feed("age", age, np.array([[101.0]]), "FP32")
    with pytest.raises(TensorError, match="missing values"):
        to_feed("age", age, np.array([np.nan]), "FP32")
    sex = InputField(type="category", values=["female", "male"])
    with pytest.raises(TensorError, match="not allowed"):
        to_feed("sex", sex, np.array([b"other"], dtype=object), "BYTES")
    assert to_feed("age", age, np.array([3.0]), "FP64").shape == (1, 1)


def test_series_are_lists_of_bounded_numbers_of_their_length() -> None:
    model = record_model(CATALOG["energy_forecast"])
    good = {"demand_history": [5.0] * 336, "temperature": [20.0] * 48, "workday": 1,
            "day_of_week": 2}  # fmt: skip
    assert len(model(**good).temperature) == 48  # type: ignore[attr-defined]
    for bad, where in (
        ({"temperature": [20.0] * 47}, "temperature"),
        ({"demand_history": [5.0] * 335 + [25.0]}, "demand_history.335"),
        ({"demand_history": [5.0] * 335 + [None]}, "demand_history.335"),
    ):
        with pytest.raises(ValidationError) as info:
            model(**good | bad)
        assert describe_errors(info.value)[0]["field"] == where


def test_series_tensors_keep_their_length() -> None:
    history = CATALOG["energy_forecast"].fields["demand_history"]
    assert to_feed("demand_history", history, np.ones((2, 336)), "FP64").shape == (2, 336)
    for array, words in ((np.ones((2, 300)), "shape"), (np.full((1, 336), np.nan), "missing")):
        with pytest.raises(TensorError, match=words):
            to_feed("demand_history", history, array, "FP32")


def test_header_split_and_compression() -> None:
    import gzip

    header = json.dumps({"inputs": []}).encode()
    parsed, tail = split_body(header + b"\x01\x02", str(len(header)))
    assert parsed == {"inputs": []} and tail == b"\x01\x02"
    assert decompress(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    with pytest.raises(OverflowError):
        decompress(gzip.compress(b"a" * 100), "gzip", 10)
    with pytest.raises(TensorError, match="not a length"):
        split_body(b"{}", "99")


def test_outputs_are_encoded_as_asked() -> None:
    outputs = {"label": np.array([1, 0], np.int64), "p": np.array([[0.5, 0.5]], np.float32)}
    described, blobs = encode_outputs(outputs, binary={"p"})
    assert described[0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert described[1]["parameters"] == {"binary_data_size": 8} and blobs == [b"\0\0\0?" * 2]


def test_request_ids_split_evenly_and_stick() -> None:
    shares = [bucket(f"id-{i}") for i in range(10_000)]
    assert abs(np.mean(np.array(shares) < 0.25) - 0.25) < 0.02
    assert bucket("same") == bucket("same")


def cached_artifact(tmp_path: Path) -> tuple[ModelStore, Path]:
    store = ModelStore("sqlite:///unused.db", tmp_path)
    path = tmp_path / "titanic" / "v3" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"onnx bytes")
    artifact = Artifact(
        "titanic", "champion", "3", sha256_of(path), path, {"roc_auc": 0.9}, "registry"
    )
    (tmp_path / "titanic" / "champion.json").write_text(json.dumps(artifact.manifest()))
    return store, path


def test_local_copy_is_served_when_intact(tmp_path: Path) -> None:
    store, _ = cached_artifact(tmp_path)
    artifact = store.cached("titanic", "champion")
    assert artifact is not None and (artifact.version, artifact.source) == ("3", "cache")
    assert store.cached("titanic", "challenger") is None


def test_corrupted_local_copy_is_refused(tmp_path: Path) -> None:
    store, path = cached_artifact(tmp_path)
    path.write_bytes(b"onnx bytez")
    with pytest.raises(ArtifactRefused, match="corrupted"):
        store.cached("titanic", "champion")


def test_files_served_beside_the_graph_are_checked_too(tmp_path: Path) -> None:
    """A search's index is cached with the graph; a changed or missing one is refused."""
    store = ModelStore("sqlite:///unused.db", tmp_path)
    folder = tmp_path / "semantic_search" / "v2"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"encoder")
    (folder / "index.faiss").write_bytes(b"index")
    files = (("index.faiss", sha256_of(folder / "index.faiss")),)
    artifact = Artifact(
        "semantic_search", "champion", "2", sha256_of(folder / "model.onnx"),
        folder / "model.onnx", {}, "registry", 0.0, files,
    )  # fmt: skip
    manifest = tmp_path / "semantic_search" / "champion.json"
    manifest.write_text(json.dumps(artifact.manifest()))
    cached = store.cached("semantic_search", "champion")
    assert cached is not None and cached.files == files and cached.directory == folder
    (folder / "index.faiss").write_bytes(b"indeX")
    with pytest.raises(ArtifactRefused, match=r"\['index.faiss'\] missing or changed"):
        store.cached("semantic_search", "champion")
    (folder / "index.faiss").unlink()
    with pytest.raises(ArtifactRefused, match=r"index\.faiss"):
        store.cached("semantic_search", "champion")


def counted_hashing(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the store hashes from now on, in order."""
    hashed: list[Path] = []

    def sha256_of(path: Path) -> str:
        hashed.append(path)
        return store_module.hashlib.sha256(path.read_bytes()).hexdigest()

    monkeypatch.setattr(store_module, "sha256_of", sha256_of)
    return hashed


def test_checksums_are_remembered_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry poll's check of the cached copy hashes a settled file once; a rewrite
    (same size), a replacement or the hour's recheck hashes it again."""
    hashed = counted_hashing(monkeypatch)
    now = [time.time() + 10]  # the file looks settled: written 10 s ago
    checksums = Checksums(clock=lambda: now[0])
    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph one")
    first = checksums(path)
    assert checksums(path) == first and len(hashed) == 1
    time.sleep(0.05)  # past the filesystem clock's tick
    path.write_bytes(b"graph two")
    assert checksums(path) == sha256_of(path) != first and len(hashed) == 2
    replacement = tmp_path / "new.onnx"
    replacement.write_bytes(b"graph two")
    os.replace(replacement, path)  # same bytes, another inode
    assert checksums(path) == sha256_of(path) and len(hashed) == 3
    now[0] += store_module.RECHECK_S
    assert checksums(path) == sha256_of(path) and len(hashed) == 4


def test_a_file_hashed_as_it_was_written_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewrite within the filesystem clock's tick keeps the file's times: a checksum taken
    within SETTLE_S of the last change is not trusted later (git's "racily clean" rule)."""
    hashed = counted_hashing(monkeypatch)
    checksums = Checksums()
    path = tmp_path / "model.onnx"
    path.write_bytes(b"graph one")
    checksums(path)
    path.write_bytes(b"graph 1ne")  # at once: possibly the same mtime and ctime
    assert checksums(path) == sha256_of(path) and len(hashed) == 2


def test_bentoml_timeout_middleware_fix_keeps_504_and_cancels_timers() -> None:
    import asyncio

    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import PlainTextResponse

    from services.api import bentoml_fix

    bentoml_fix.apply()

    async def slow_or_fast(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(0.2 if scope["path"] == "/slow" else 0)
        await PlainTextResponse("ok")(scope, receive, send)

    async def status(path: str) -> tuple[int, int]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "path": path, "method": "GET", "headers": []}
        await TimeoutMiddleware(slow_or_fast, timeout=0.05)(scope, receive, send)
        scheduled = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
        timers = sum(not timer.cancelled() for timer in scheduled)  # cancelled: nothing held
        return sent[0]["status"], timers

    assert asyncio.run(status("/fast")) == (200, 0)  # no live timer left behind
    assert asyncio.run(status("/slow"))[0] == 504
