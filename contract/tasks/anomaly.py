"""Anomaly detection: an anomaly score and the decision at the detector's threshold
(shuttle_anomaly). Unsupervised: the labels stay out of training and only judge it."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    WHOLE_GRAPH,
    Plot,
    Served,
    decided,
    decisive_probabilities,
    output_as_native,
    positive_flags,
    require_positive,
    rounded,
    served_as_is,
    two_valued,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import (
    class_indices,
    label_outcome,
    labelled_score,
    labels_view,
    named_outcomes,
)
from contract.tasks.outcomes import no_targets as targets

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["payload", "targets"]
SUPERVISED, STRATIFIED, LABELS_SERVED = False, True, True
# an isolation forest never sees a label: outcomes judge it, they do not train it
LEARNS_FROM_OUTCOMES = False
NATIVE = "anomaly_scores"  # higher: more anomalous
RELATIVE_PARITY = False
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = False
DISCRETE_TARGET = True  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = "roc_auc"

# what it shares with other task kinds (contract/tasks/common.py)
validate = require_positive
target_column = two_valued
labels = decided
encode_target = positive_flags


def class_names(spec: "ModelSpec") -> list[str]:
    return spec.target.classes or ["normal", "anomaly"]


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Ranking quality of the scores [N] against labels the model never saw, and the
    decision: the scores above the detector's threshold are flagged."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    if threshold is None:
        raise ValueError("an anomaly detector needs its decision threshold")
    flagged = decided(predicted, threshold)  # sklearn: anomalous past the offset
    result = {
        "roc_auc": m.roc_auc_score(y, predicted),
        "pr_auc": m.average_precision_score(y, predicted),
        "precision": m.precision_score(y, flagged, zero_division=0),
        "recall": m.recall_score(y, flagged),
        "f1": m.f1_score(y, flagged),
        "flagged_share": flagged.mean(),
        "threshold": round(threshold, 6),
    }
    return rounded(result)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    assert threshold is not None
    names = class_names(spec)
    return {
        "roc.png": ("roc", (y, predicted)),
        "precision_recall.png": ("precision_recall", (y, predicted)),
        "scores.png": ("score_distribution", (y, predicted, threshold, names)),
        "confusion.png": ("confusion", (y, decided(predicted, threshold), names)),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    classes, threshold = class_names(served.spec), served.threshold
    return [
        {"label": classes[int(lab)], "score": s, "threshold": threshold}
        for lab, s in zip(
            result["label"].reshape(-1).tolist(), result["score"].reshape(-1).tolist(), strict=True
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The anomaly score and its decision."""
    return {SCORE: prediction.get("score"), LABEL: prediction.get("label")}


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "; fitted without it (unsupervised), it only judges the scores (test split)",
        "artifact": WHOLE_GRAPH,
    }


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("score",)
serve = served_as_is
decisive = decisive_probabilities


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "score", vector=True)


def outcome(spec: "ModelSpec") -> Any:
    """What it was: the class name (or 0 / 1)."""
    return label_outcome(class_names(spec))


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """`score` of the served scores, at the threshold each answer carries."""
    scores = np.asarray([p["score"] for p in predictions], dtype=np.float64)
    threshold = float(predictions[-1]["threshold"])  # one version: one threshold
    y = class_indices(outcomes, class_names(spec))
    return labelled_score(score, spec, y, scores, threshold)


def true_outcomes(frame: pd.DataFrame, spec: "ModelSpec") -> list[Any]:
    """Held-out rows' targets as /feedback takes them (the load test, the loop demo)."""
    return named_outcomes(encode_target(frame[spec.target.column], spec), class_names(spec))


def evidently_view(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> tuple[Any, Any, Any]:
    """Evidently's classification preset over the served decisions (normal / anomaly)."""
    return labels_view(class_names(spec), [p["label"] for p in predictions], outcomes)
