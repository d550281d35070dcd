"""The task layer's outcomes: what feedback may carry and how served predictions are scored."""

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from contract.catalog import ModelSpec
from contract.tasks import get_task
from contract.tasks.outcomes import at_k, served_threshold
from tests.conftest import CATALOG


def adapter(spec: ModelSpec) -> TypeAdapter[Any]:
    annotation = get_task(spec.task).outcome(spec)
    assert annotation is not None, f"{spec.key} takes no outcome"
    return TypeAdapter(annotation)


def test_a_class_is_sent_back_by_name_or_index_and_stored_by_name() -> None:
    outcome = adapter(CATALOG["titanic"])
    assert outcome.validate_python("survived") == "survived"
    assert outcome.validate_python(1) == "survived"
    assert outcome.validate_python(0) == "died"
    for wrong in ("Survived", 2, -1, None, 0.5, ["died"]):
        with pytest.raises(ValidationError):
            outcome.validate_python(wrong)
    assert adapter(CATALOG["fashion_cnn"]).validate_python(9) == "Ankle boot"


def test_a_value_a_series_and_items_are_checked_against_the_target() -> None:
    price = adapter(CATALOG["house_prices"])  # fitted on log(price): positive
    assert price.validate_python(215000) == 215000.0
    for wrong in (0, -5, float("nan"), float("inf"), "cheap"):
        with pytest.raises(ValidationError):
            price.validate_python(wrong)
    horizon = CATALOG["energy_forecast"].target.horizon
    assert horizon
    series = adapter(CATALOG["energy_forecast"])
    assert len(series.validate_python([1.0] * horizon)) == horizon
    for wrong in ([1.0] * (horizon - 1), [1.0] * (horizon + 1), [float("nan")] * horizon):
        with pytest.raises(ValidationError):
            series.validate_python(wrong)
    items = adapter(CATALOG["movie_recs"])
    assert items.validate_python([1, 2, "3"]) == [1, 2, "3"]
    for wrong in ([], [1.5], "1,2", [None], list(range(1001)), [2**63], [""], ["x" * 201]):
        with pytest.raises(ValidationError):
            items.validate_python(wrong)


def test_segments_take_no_outcome() -> None:
    spec = CATALOG["customer_segments"]
    assert get_task(spec.task).outcome(spec) is None


def test_binary_performance_scores_the_decisions_as_served() -> None:
    """The log carries P(positive) and the label decided at the model's own threshold (0.3
    here): the accuracy is the share of served labels that were right, not argmax's."""
    spec = CATALOG["credit_default"]
    p = [0.1, 0.25, 0.6, 0.2, 0.32, 0.9, 0.45]
    served = ["defaults" if v >= 0.3 else "repays" for v in p]
    truth = ["repays", "repays", "defaults", "repays", "defaults", "defaults", "repays"]
    predictions = [{"probability": v, "label": label} for v, label in zip(p, served, strict=True)]
    got = get_task(spec.task).performance(spec, predictions, truth)
    right = np.mean([s == t for s, t in zip(served, truth, strict=True)])
    assert got["accuracy"] == pytest.approx(right)
    assert got["roc_auc"] == pytest.approx(11 / 12)  # one repayer above a defaulter
    assert "threshold" not in got


def test_one_class_in_the_window_scores_only_what_is_defined() -> None:
    spec = CATALOG["titanic"]
    predictions = [{"probability": 0.8, "label": "survived"}, {"probability": 0.2, "label": "died"}]
    got = get_task(spec.task).performance(spec, predictions, ["survived", "survived"])
    assert got == {"accuracy": 0.5}


def test_multiclass_regression_forecast_and_anomaly_performance() -> None:
    penguins = CATALOG["penguins"]
    names = penguins.target.classes or []
    rows = [
        {"label": "Adelie", "probabilities": dict(zip(names, [0.8, 0.1, 0.1], strict=True))},
        {"label": "Gentoo", "probabilities": dict(zip(names, [0.1, 0.2, 0.7], strict=True))},
        {"label": "Adelie", "probabilities": dict(zip(names, [0.5, 0.4, 0.1], strict=True))},
    ]
    got = get_task("multiclass").performance(penguins, rows, ["Adelie", "Gentoo", "Chinstrap"])
    assert got["accuracy"] == pytest.approx(2 / 3)
    houses = CATALOG["house_prices"]
    values = [{"value": 100.0}, {"value": 200.0}]
    got = get_task("regression").performance(houses, values, [110.0, 180.0])
    assert got["rmse"] == pytest.approx(np.sqrt((100 + 400) / 2))
    one = get_task("regression").performance(houses, values[:1], [110.0])
    assert "r2" not in one and one["mae"] == pytest.approx(10.0)  # R² of one value: undefined
    energy = CATALOG["energy_forecast"]
    horizon = energy.target.horizon or 0
    got = get_task("forecast").performance(
        energy, [{"forecast": [110.0] * horizon}], [[100.0] * horizon]
    )
    assert got["mape"] == pytest.approx(0.1)
    shuttle = CATALOG["shuttle_anomaly"]
    scored = [{"score": s, "label": "x", "threshold": 0.5} for s in (0.1, 0.7, 0.6, 0.2)]
    got = get_task("anomaly").performance(shuttle, scored, [0, 1, "normal", "normal"])
    assert got["recall"] == 1.0 and got["precision"] == 0.5


def test_rankings_are_scored_at_k_against_the_items_wanted() -> None:
    got = at_k([["a", "b", "c"], ["d", "e", "f"]], [["c", "z"], ["x"]], k=3)
    assert got == {
        "precision_at_3": pytest.approx(1 / 6, abs=1e-6),
        "recall_at_3": 0.25,
        "hit_rate_at_3": 0.5,
        "mrr": pytest.approx(1 / 6, abs=1e-6),
    }
    movies = CATALOG["movie_recs"]
    k = int(movies.params["top_k"])
    listed = [{"recommendations": [{"movieId": i, "score": 4.0} for i in range(1, k + 1)]}]
    got = get_task("recommendation").performance(movies, listed, [[2, 999]])
    assert got[f"precision_at_{k}"] == pytest.approx(1 / k) and got["mrr"] == 0.5


def test_the_served_threshold_reproduces_the_decisions() -> None:
    rng = np.random.default_rng(0)
    positive = rng.random(200)
    for threshold in (0.0, 0.27, 0.5, 0.93, 1.1):
        flagged = positive >= threshold
        assert ((positive >= served_threshold(positive, flagged)) == flagged).all()


def test_evidently_reports_the_labelled_window_with_the_tasks_preset(tmp_path: Any) -> None:
    """The drift service's performance report: each task with outcomes a preset fits
    gives Evidently a frame, a data definition and its preset, which render to HTML."""
    from evidently import Dataset, Report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.6 * y + 0.5 * rng.random(60), 0, 1)
    titanic = CATALOG["titanic"]
    served = [{"probability": v, "label": "survived" if v >= 0.5 else "died"} for v in p]
    penguins = CATALOG["penguins"]
    species = list(rng.choice(penguins.target.classes or [], 60))
    houses = CATALOG["house_prices"]
    values = rng.uniform(1e5, 3e5, 60)
    windows: list[tuple[ModelSpec, list[Any], list[Any]]] = [
        (titanic, served, y.tolist()),
        (penguins, [{"label": s} for s in species], list(reversed(species))),
        (houses, [{"value": v} for v in values], (values * 1.1).tolist()),
        (CATALOG["shuttle_anomaly"], [{"label": "normal"}] * 60, ["normal", "anomaly"] * 30),
    ]
    for spec, predictions, outcomes in windows:
        view = spec.task_kind.evidently_view(spec, predictions, outcomes)
        assert view is not None, spec.key
        frame, definition, preset = view
        assert list(frame.columns) == ["target", "prediction"] and len(frame) == 60
        path = tmp_path / f"{spec.key}.html"
        Report([preset]).run(Dataset.from_pandas(frame, data_definition=definition)).save_html(
            str(path)
        )
        assert path.stat().st_size > 10_000, spec.key
    for key in ("energy_forecast", "movie_recs", "semantic_search", "customer_segments"):
        assert CATALOG[key].task_kind.evidently_view(CATALOG[key], [], []) is None, key
