"""Metrics, floors and the champion gate."""

import json

import numpy as np
import pytest

from contract import paths
from pipelines.metrics import floors_met, score
from pipelines.registry import CHALLENGER, CHAMPION, Window, decide
from tests.conftest import CATALOG


def test_binary_metrics() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    metrics = score(CATALOG["titanic"], y, proba)
    assert metrics["roc_auc"] == 1.0 and metrics["accuracy"] == 0.75 and metrics["recall"] == 1.0


def test_multiclass_metrics() -> None:
    y = np.array([0, 1, 2])
    proba = np.eye(10)[[0, 1, 3]]
    metrics = score(CATALOG["fashion_cnn"], y, proba * 0.9 + 0.01)
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert "macro_f1" in metrics and "roc_auc" not in metrics


def test_anomaly_metrics_rank_scores_and_flag_above_the_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.40, 0.45, 0.60, 0.58, 0.70])
    metrics = score(CATALOG["shuttle_anomaly"], y, scores, threshold=0.55)
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == 1.0
    assert metrics["flagged_share"] == pytest.approx(3 / 5) and metrics["threshold"] == 0.55
    assert 0 < metrics["pr_auc"] <= 1
    with pytest.raises(ValueError, match="threshold"):
        score(CATALOG["shuttle_anomaly"], y, scores)


def test_clustering_metrics_judge_the_clustered_space() -> None:
    embedding = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    centres = np.array([[0.05, 0.0], [5.05, 5.0]])
    distances = np.linalg.norm(embedding[:, None] - centres[None], axis=2)
    metrics = score(CATALOG["customer_segments"], np.zeros(4), distances, embedding=embedding)
    assert metrics["silhouette"] > 0.95 and metrics["smallest_segment_share"] == 0.5
    assert metrics["mean_distance"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="embedding"):
        score(CATALOG["customer_segments"], np.zeros(4), distances)


def test_regression_metrics_on_log_scale() -> None:
    y = np.array([100_000.0, 200_000.0])
    metrics = score(CATALOG["house_prices"], y, y * np.exp(0.1))
    assert metrics["rmse_log"] == pytest.approx(0.1, abs=1e-6)
    assert metrics["mape"] == pytest.approx(np.exp(0.1) - 1, abs=1e-6)


def test_floors() -> None:
    spec = CATALOG["house_prices"]
    assert floors_met(spec, {"rmse_log": 0.12, "r2_log": 0.9}) == {"rmse_log": True, "r2_log": True}
    assert floors_met(spec, {"rmse_log": 0.15, "r2_log": 0.9})["rmse_log"] is False


@pytest.mark.parametrize(
    ("metrics", "incumbent", "alias", "why"),
    [
        ({"roc_auc": 0.90, "accuracy": 0.82}, None, CHAMPION, "no champion before"),
        ({"roc_auc": 0.90, "accuracy": 0.82}, 0.89, CHAMPION, "not worse"),
        ({"roc_auc": 0.90, "accuracy": 0.82}, 0.90, CHAMPION, "not worse"),
        ({"roc_auc": 0.88, "accuracy": 0.82}, 0.89, CHALLENGER, "worse than champion"),
        ({"roc_auc": 0.95, "accuracy": 0.70}, None, CHALLENGER, "floor missed: accuracy"),
        ({"roc_auc": 0.95, "accuracy": 0.70}, 0.80, CHALLENGER, "floor missed"),
    ],
)
def test_gate_higher_is_better(
    metrics: dict[str, float], incumbent: float | None, alias: str, why: str
) -> None:
    decided, reason = decide(CATALOG["titanic"], metrics, incumbent)
    assert decided == alias and why in reason


@pytest.mark.parametrize(
    ("test_auc", "window", "alias", "why"),
    [
        # better where the world is now, a little worse on the older split: within 0.03
        (0.875, Window(60, 0.81, 0.70), CHAMPION, "on the production window (60 records)"),
        (0.85, Window(60, 0.81, 0.70), CHALLENGER, "but roc_auc 0.8500 on the test split"),
        (0.95, Window(60, 0.69, 0.70), CHALLENGER, "worse: roc_auc 0.6900 on the production"),
    ],
)
def test_the_gate_weighs_the_production_window_first(
    test_auc: float, window: Window, alias: str, why: str
) -> None:
    """titanic's production: test_margin 0.03; the champion scores 0.89 on the test split."""
    metrics = {"roc_auc": test_auc, "accuracy": 0.82}
    decided, reason = decide(CATALOG["titanic"], metrics, 0.89, window)
    assert decided == alias and why in reason, reason


def test_gate_lower_is_better() -> None:
    spec = CATALOG["house_prices"]
    assert decide(spec, {"rmse_log": 0.11, "r2_log": 0.93}, 0.12)[0] == CHAMPION
    assert decide(spec, {"rmse_log": 0.13, "r2_log": 0.90}, 0.12)[0] == CHALLENGER


def test_the_fine_tuned_transformer_beats_tfidf_on_the_same_test_split() -> None:
    """The committed metrics (dvc.lock's run): review_sentiment_transformer was judged on the
    reviews review_sentiment was, and ranks them better (its second floor, README)."""
    tfidf, transformer = (
        json.loads(paths.metrics_file(key).read_text())
        for key in ("review_sentiment", "review_sentiment_transformer")
    )
    ours, theirs = CATALOG["review_sentiment_transformer"], CATALOG["review_sentiment"]
    assert ours.source.model_copy(update={"install": ""}) == theirs.source.model_copy(
        update={"install": ""}
    )
    assert (ours.split, ours.target, ours.drop) == (theirs.split, theirs.target, theirs.drop)
    assert transformer["test_rows"] == tfidf["test_rows"]
    assert transformer["roc_auc"] > tfidf["roc_auc"]
