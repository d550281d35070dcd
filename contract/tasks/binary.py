"""Binary classification: P(positive) and the decision, at a tuned threshold if the model
has one (titanic, churn, credit_default, spam_email, review_sentiment)."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    Plot,
    Served,
    decided,
    decisive_probabilities,
    output_as_native,
    positive_flags,
    probabilities_score,
    require_positive,
    rounded,
    served_as_is,
    two_valued,
    whole_graph_card,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import (
    binary_view,
    class_indices,
    label_outcome,
    labelled_score,
    served_threshold,
)
from contract.tasks.outcomes import class_targets as targets
from contract.tasks.outcomes import class_true_outcomes as true_outcomes

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["payload", "targets", "true_outcomes"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, True, True
LEARNS_FROM_OUTCOMES = True
NATIVE = "probabilities"
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
card = whole_graph_card
encode_target = positive_flags


def class_names(spec: "ModelSpec") -> list[str]:
    return spec.target.classes or ["negative", "positive"]


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """`predicted`: probabilities [N, 2]; `threshold`: the model's own decision threshold
    (tuned for a cost), applied to P(positive) as the served label is."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    result, decisions, predicted = probabilities_score(y, predicted, threshold)
    positive = predicted[:, 1]
    result |= {
        "roc_auc": m.roc_auc_score(y, positive),
        "average_precision": m.average_precision_score(y, positive),
        "precision": m.precision_score(y, decisions, zero_division=0),
        "recall": m.recall_score(y, decisions),
        "f1": m.f1_score(y, decisions),
        "brier": m.brier_score_loss(y, positive),
    }
    if threshold is not None:
        result["threshold"] = round(threshold, 6)
    if "cost_false_negative" in spec.params:  # the stated cost per case (FP costs 1)
        fp = int(((decisions == 1) & (y == 0)).sum())
        fn = int(((decisions == 0) & (y == 1)).sum())
        result["cost_per_case"] = (spec.params["cost_false_negative"] * fn + fp) / len(y)
    return rounded(result)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {
        "roc.png": ("roc", (y, predicted[:, 1])),
        "confusion.png": ("confusion", (y, decided(predicted, threshold), class_names(spec))),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    classes = class_names(served.spec)
    return [
        {"label": classes[int(lab)], "probability": p[1]}
        for lab, p in zip(
            result["label"].reshape(-1).tolist(), result["probabilities"].tolist(), strict=True
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """P(positive) and the decision."""
    return {SCORE: prediction.get("probability"), LABEL: prediction.get("label")}


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("probabilities",)
serve = served_as_is
decisive = decisive_probabilities


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "probabilities", vector=False)


def outcome(spec: "ModelSpec") -> Any:
    """What happened: the class name (or 0 / 1)."""
    return label_outcome(class_names(spec))


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """`score` of the served P(positive), decided as served, against the outcomes."""
    names = class_names(spec)
    positive = np.asarray([p["probability"] for p in predictions], dtype=np.float64)
    flagged = np.asarray([p["label"] == names[1] for p in predictions])
    threshold = served_threshold(positive, flagged)
    probabilities = np.column_stack([1 - positive, positive])
    return labelled_score(score, spec, class_indices(outcomes, names), probabilities, threshold)


def evidently_view(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> tuple[Any, Any, Any]:
    """Evidently's classification preset over served P(positive), at the served threshold."""
    names = class_names(spec)
    positive = np.asarray([p["probability"] for p in predictions], dtype=np.float64)
    flagged = np.asarray([p["label"] == names[1] for p in predictions])
    return binary_view(names, positive, flagged, outcomes)
