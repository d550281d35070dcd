"""The runtime on the trained graphs, in-process: records to tensors exactly as the pipeline
builds them, and a text batch in length-sorted chunks answering exactly as in one piece."""

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from contract import paths
from contract.feeds import onnx_feeds
from services.api import runtime
from services.api.inputs import record_model, request_model
from services.api.store import Artifact
from services.tools.examples import as_records
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import held_out

pytestmark = pytest.mark.slow


def loaded(trained: Path, key: str) -> runtime.LoadedModel:
    path = paths.served_model(key, trained)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return runtime.load(CATALOG[key], Artifact(key, "champion", "1", digest, path, {}, "cache"))


def records(key: str, rows: list[dict[str, Any]]) -> list[BaseModel]:
    spec = CATALOG[key]
    body = request_model(spec, record_model(spec), len(rows))
    return list(body.model_validate({"records": rows}).records)  # type: ignore[attr-defined]


def counted(model: runtime.LoadedModel) -> list[int]:
    """The sizes of the batches the model's session runs from now on (the real session)."""
    sizes: list[int] = []
    run = model.run

    def counting(feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> Any:
        sizes.append(len(next(iter(feeds.values()))))
        return run(feeds, outputs)

    model.run = counting  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize("key", [k for k in KEYS if CATALOG[k].task != "retrieval"])
def test_feeds_are_the_pipelines_tensors(trained: Path, key: str) -> None:
    """LoadedModel.feeds and pipelines.schema.onnx_feeds: the same dtypes, shapes and values,
    missing values included (titanic's cabins and ages: "" and NaN)."""
    frame = held_out(trained, key, rows=64)
    model = loaded(trained, key)
    got = model.feeds(records(key, as_records(frame, CATALOG[key])))
    expected = onnx_feeds(frame, CATALOG[key])
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert (got[name].dtype, got[name].shape) == (array.dtype, array.shape), name
        assert np.array_equal(got[name], array, equal_nan=array.dtype.kind == "f"), name
    if key == "titanic":
        assert np.isnan(got["age"]).any() and (got["cabin"] == "").any()


@pytest.fixture(scope="module")
def reviews(trained: Path) -> list[BaseModel]:
    """600 held-out reviews as validated records: long ones among them, padding to spare."""
    batch = records(
        "review_sentiment",
        as_records(held_out(trained, "review_sentiment", rows=600), CATALOG["review_sentiment"]),
    )
    lengths = sorted(len(record.review) for record in batch)  # type: ignore[attr-defined]
    assert lengths[-1] > 4 * lengths[len(lengths) // 2]
    return batch


def test_a_text_batch_runs_in_length_sorted_chunks_with_the_same_answers(
    trained: Path, reviews: list[BaseModel]
) -> None:
    model = loaded(trained, "review_sentiment")
    whole = model.run(model.feeds(reviews))
    sizes = counted(model)
    chunked = model.predict(reviews, 128)
    assert sizes == [128, 128, 128, 128, 88]
    assert list(chunked) == list(whole)
    for name, array in whole.items():
        assert np.array_equal(chunked[name], array), name  # in the records' order
    assert model.format(chunked) == model.format(whole)


def test_tensors_in_chunks_answer_the_outputs_asked_for(
    trained: Path, reviews: list[BaseModel]
) -> None:
    """OIP's path: tensors in, some outputs asked for, in chunks as /predict's records."""
    model = loaded(trained, "review_sentiment")
    feeds = model.feeds(reviews)
    wanted = model.served_outputs[-1:]
    whole = model.run(feeds, wanted)
    sizes = counted(model)
    chunked = model.run_chunked(feeds, 128, wanted)
    assert (sizes, list(chunked)) == ([128, 128, 128, 128, 88], wanted)
    assert np.array_equal(chunked[wanted[0]], whole[wanted[0]])


def test_short_texts_and_small_batches_go_whole(trained: Path, reviews: list[BaseModel]) -> None:
    titanic = loaded(trained, "titanic")
    passengers = records(
        "titanic", as_records(held_out(trained, "titanic", rows=200), CATALOG["titanic"])
    )
    sizes = counted(titanic)
    titanic.predict(passengers, 128)  # names of ~25 characters: little padding to spare
    model = loaded(trained, "review_sentiment")
    review_sizes = counted(model)
    model.predict(reviews[:100], 128)  # one chunk's worth
    model.predict(reviews, 0)  # chunks off
    assert (sizes, review_sizes) == ([200], [100, 600])
