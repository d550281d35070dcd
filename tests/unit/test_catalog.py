"""The catalog: every entry parses, has its module, and bad entries fail clearly."""

import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from contract.catalog import ModelSpec, UnknownModelError, get_spec, load_params
from contract.paths import ROOT
from pipelines.flavors import judged_test_split, retrieval
from pipelines.models import get_project, is_project
from tests.conftest import CATALOG, KEYS

HELPERS = {
    "__init__",
    "tabular",
    "clustering",
    "factorization",
    "forecasting",
}  # pipelines/models/ modules that are not catalog entries


def test_every_entry_has_a_module_and_every_module_an_entry() -> None:
    modules = {p.stem for p in (ROOT / "pipelines" / "models").glob("*.py")} - HELPERS
    assert modules == set(CATALOG)


@pytest.mark.parametrize("key", KEYS)
def test_module_follows_the_project_protocol(key: str) -> None:
    assert is_project(get_project(key))  # type: ignore[arg-type]


def test_a_helper_module_is_not_a_project(monkeypatch: pytest.MonkeyPatch) -> None:
    helper = types.ModuleType("pipelines.models.helper")
    helper.build = lambda spec: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipelines.models.helper", helper)
    with pytest.raises(TypeError, match="defines no FLAVOR"):
        get_project("helper")
    with pytest.raises(UnknownModelError):  # the estimators are building blocks, not entries
        get_project("tabular")


@pytest.mark.parametrize("key", KEYS)
def test_entry_is_consistent(key: str) -> None:
    spec = CATALOG[key]
    assert spec.gate_metric in spec.floors
    assert spec.target.column not in spec.fields
    if spec.task in ("binary", "multiclass", "anomaly"):  # segments are found, not declared
        assert len(spec.class_names) >= 2


def test_a_latency_objective_is_a_bucket_of_the_latency_histogram() -> None:
    spec = CATALOG["tree_detection"]
    assert spec.slo.p99_ms == 250 and CATALOG["titanic"].slo.p99_ms == 50  # the default
    with pytest.raises(ValidationError, match="a latency histogram bucket"):
        spec.model_validate(spec.model_dump() | {"slo": {"p99_ms": 60}})


def test_unknown_key_names_the_catalog() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_spec("no_such_model")
    assert "no_such_model" in str(info.value) and "titanic" in str(info.value)
    with pytest.raises(UnknownModelError):
        get_project("no_such_model")


def _entry(key: str, **changes: object) -> dict[str, object]:
    return load_params()["models"][key] | changes


def test_gate_metric_needs_a_floor() -> None:
    with pytest.raises(ValidationError, match="gate_metric"):
        ModelSpec(key="titanic", **_entry("titanic", gate_metric="f1"))


def test_binary_task_needs_positive_class() -> None:
    entry = _entry("titanic")
    entry["target"] = {"column": "survived"}
    with pytest.raises(ValidationError, match="positive"):
        ModelSpec(key="titanic", **entry)


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        ModelSpec(key="titanic", **_entry("titanic", learning_rat=0.1))


def test_predefined_split_must_match_source() -> None:
    with pytest.raises(ValidationError, match="split"):
        ModelSpec(key="review_sentiment", **_entry("review_sentiment", split={"test_size": 0.2}))


def test_only_a_text_field_may_ask_for_an_embedding_and_a_model_embeds_one_field() -> None:
    titanic = _entry("titanic")
    fields = titanic["fields"] | {"age": {"type": "float", "embedding": True}}  # type: ignore[operator]
    with pytest.raises(ValidationError, match="for text fields"):
        ModelSpec(key="titanic", **(titanic | {"fields": fields}))
    two = titanic["fields"] | {  # type: ignore[operator]
        "name": {"type": "text", "embedding": True},
        "cabin": {"type": "text", "embedding": True},
    }
    with pytest.raises(ValidationError, match="one field at most"):
        ModelSpec(key="titanic", **(titanic | {"fields": two}))


@pytest.mark.parametrize(
    ("int8", "message"),
    [
        ({"max_drop": 0.01}, "required by static"),
        ({"mode": "dynamic", "calibration_rows": 10, "max_drop": 0.01}, "only by it"),
    ],
)
def test_static_quantization_is_calibrated_and_dynamic_is_not(
    int8: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec(key="fashion_cnn", **_entry("fashion_cnn", int8=int8))


def test_gate_direction_follows_the_floor() -> None:
    assert CATALOG["titanic"].higher_is_better
    assert not CATALOG["house_prices"].higher_is_better


def test_a_search_is_judged_on_its_bounded_queries_other_flavors_on_every_row(
    tmp_path: Path,
) -> None:
    """max_queries (quick runs) bounds the test texts evaluate and export embed, and the
    metrics say how many (test_rows); flavors without a bound are judged on every row."""
    test = pd.DataFrame({"query": [f"text {i}" for i in range(50)]})
    test.to_parquet(tmp_path / "test.parquet")
    encoder = retrieval.Encoder(Path("."), nlist=4, nprobe=2, max_queries=20)
    model = retrieval.SearchIndex(encoder, Path("."), None, pd.DataFrame(), np.zeros((0, 4)))
    assert judged_test_split(retrieval, model, tmp_path).equals(test.head(20))
    unbounded = replace(model, encoder=replace(encoder, max_queries=None))
    assert len(judged_test_split(retrieval, unbounded, tmp_path)) == 50
    assert judged_test_split(get_project("titanic").FLAVOR, object(), tmp_path).equals(test)
