"""Task metrics on a held-out split: the numbers floors and the gate compare."""

from typing import Any

import numpy as np
from sklearn import metrics as m

from pipelines.catalog import ModelSpec


def decision_threshold(model: Any) -> float | None:
    """The threshold a model decides with: a classifier's tuned one (sklearn's
    TunedThresholdClassifierCV), or an outlier detector's on its anomaly score
    (-score_samples; sklearn flags a row when score_samples < offset_)."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    value = getattr(final, "best_threshold_", None)
    if value is None and hasattr(final, "offset_") and hasattr(final, "score_samples"):
        value = -final.offset_
    return None if value is None else float(value)


def decided(predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices: P(positive) >= threshold when there is one, else the most probable;
    for anomaly scores, 1 above the threshold."""
    if predicted.ndim == 1:  # anomaly scores
        assert threshold is not None
        return (predicted > threshold).astype(np.int64)
    if threshold is None:
        return np.asarray(predicted.argmax(axis=1))
    return (predicted[:, 1] >= threshold).astype(np.int64)


def fitted_facts(model: Any) -> dict[str, float]:
    """Numbers a fitted model knows about itself: a segmentation's chosen k and how well
    other seeds agree with its clusters (pipelines/models/clustering.py)."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if not hasattr(final, "stability_ari_"):
        return {}
    facts = {"stability_ari": final.stability_ari_, "n_segments": final.n_clusters_}
    return {k: round(float(v), 6) for k, v in facts.items()}


def labels_of(spec: ModelSpec, predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    """The served label's index: the nearest segment (distances) or the decision."""
    if spec.task == "clustering":
        return np.asarray(predicted.argmin(axis=1))
    return decided(predicted, threshold)


def score(
    spec: ModelSpec,
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    embedding: np.ndarray | None = None,
) -> dict[str, float]:
    """`predicted`: probabilities [N, C] for classifiers, values [N] for regression
    (a recommender: its predicted ratings of the held-out pairs), anomaly
    scores [N] (higher: more anomalous) for anomaly detectors.

    A segmentation's `predicted` are distances [N, k] to its centres, judged by silhouette
    in `embedding`, the space it clusters.

    `threshold`: a binary model's own decision threshold (tuned for a cost), applied to
    P(positive) as the served label is; otherwise the most probable class. An anomaly
    detector flags the scores above its threshold.
    """
    if spec.task == "forecast":  # every step of every origin's horizon [N, horizon]
        return _forecast(y, predicted)
    if spec.task in ("regression", "recommendation"):  # a recommender's predicted ratings
        return _regression(spec, y, predicted)
    if spec.task == "anomaly":
        return _anomaly(y, predicted, threshold)
    if spec.task == "clustering":
        if embedding is None:
            raise ValueError("a segmentation is scored in the space it clusters: pass embedding")
        return _clustering(predicted, embedding)
    labels = decided(predicted, threshold)
    predicted = predicted / predicted.sum(axis=1, keepdims=True)  # float32 softmax: 1 +- 1e-7
    result = {
        "accuracy": m.accuracy_score(y, labels),
        "log_loss": m.log_loss(y, predicted, labels=range(predicted.shape[1])),
    }
    if spec.task == "binary":
        positive = predicted[:, 1]
        result |= {
            "roc_auc": m.roc_auc_score(y, positive),
            "average_precision": m.average_precision_score(y, positive),
            "precision": m.precision_score(y, labels, zero_division=0),
            "recall": m.recall_score(y, labels),
            "f1": m.f1_score(y, labels),
            "brier": m.brier_score_loss(y, positive),
        }
        if threshold is not None:
            result["threshold"] = round(threshold, 6)
        if "cost_false_negative" in spec.params:  # the stated cost per case (FP costs 1)
            fp = int(((labels == 1) & (y == 0)).sum())
            fn = int(((labels == 0) & (y == 1)).sum())
            result["cost_per_case"] = (spec.params["cost_false_negative"] * fn + fp) / len(y)
    else:
        result["macro_f1"] = m.f1_score(y, labels, average="macro")
    return {k: round(float(v), 6) for k, v in result.items()}


def _anomaly(y: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict[str, float]:
    """Ranking quality of the scores against labels the model never saw, and the decision."""
    if threshold is None:
        raise ValueError("an anomaly detector needs its decision threshold")
    flagged = decided(scores, threshold)  # sklearn: anomalous past the offset
    result = {
        "roc_auc": m.roc_auc_score(y, scores),
        "pr_auc": m.average_precision_score(y, scores),
        "precision": m.precision_score(y, flagged, zero_division=0),
        "recall": m.recall_score(y, flagged),
        "f1": m.f1_score(y, flagged),
        "flagged_share": flagged.mean(),
        "threshold": round(threshold, 6),
    }
    return {k: round(float(v), 6) for k, v in result.items()}


def _clustering(distances: np.ndarray, embedding: np.ndarray) -> dict[str, float]:
    labels = distances.argmin(axis=1)
    shares = np.bincount(labels, minlength=distances.shape[1]) / len(labels)
    result = {
        "silhouette": m.silhouette_score(embedding, labels),
        "davies_bouldin": m.davies_bouldin_score(embedding, labels),
        "smallest_segment_share": shares.min(),
        "mean_distance": distances.min(axis=1).mean(),
    }
    return {k: round(float(v), 6) for k, v in result.items()}


def _forecast(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    actual, forecast = y.reshape(-1), predicted.reshape(-1)
    result = {
        "mape": m.mean_absolute_percentage_error(actual, forecast),
        "rmse": m.root_mean_squared_error(actual, forecast),
        "mae": m.mean_absolute_error(actual, forecast),
        "worst_day_mape": np.abs(predicted - y).__truediv__(y).mean(axis=1).max(),
    }
    return {k: round(float(v), 6) for k, v in result.items()}


def _regression(spec: ModelSpec, y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    result = {
        "rmse": m.root_mean_squared_error(y, predicted),
        "mae": m.mean_absolute_error(y, predicted),
        "mape": m.mean_absolute_percentage_error(y, predicted),
        "r2": m.r2_score(y, predicted),
    }
    if spec.target.transform == "log":  # the scale the model is fitted and judged on
        result |= {
            "rmse_log": m.root_mean_squared_error(np.log(y), np.log(predicted)),
            "r2_log": m.r2_score(np.log(y), np.log(predicted)),
        }
    return {k: round(float(v), 6) for k, v in result.items()}


def floors_met(spec: ModelSpec, metrics: dict[str, float]) -> dict[str, bool]:
    return {name: bound.holds(metrics[name]) for name, bound in spec.floors.items()}


def not_worse(spec: ModelSpec, new: float, incumbent: float) -> bool:
    return new >= incumbent if spec.higher_is_better else new <= incumbent
