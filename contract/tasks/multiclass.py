"""Multiclass classification: the class and every class's probability (penguins,
fashion_cnn). The target is a class name or its index in `target.classes` order."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    Plot,
    Served,
    class_index,
    decided,
    decisive_probabilities,
    output_as_native,
    probabilities_score,
    rounded,
    served_as_is,
    whole_graph_card,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import (
    class_indices,
    label_outcome,
    labelled_score,
    labels_view,
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
IMPORTANCE_SCORING = "accuracy"

# what it shares with other task kinds (contract/tasks/common.py)
labels = decided
card = whole_graph_card


def validate(spec: "ModelSpec") -> None:
    if not spec.target.classes:
        raise ValueError("a multiclass task needs target.classes")


def class_names(spec: "ModelSpec") -> list[str]:
    return list(spec.target.classes or [])


def target_column(spec: "ModelSpec") -> Any:
    """The class names themselves (penguins' species) or their indices in label order
    (Fashion-MNIST's 0-9)."""
    import pandera.pandas as pa

    names = class_names(spec)
    return pa.Column(
        checks=[
            pa.Check(
                lambda s: s.isin(names) | s.isin(range(len(names))),
                error=f"is neither one of {names} nor its index",
            )
        ],
        nullable=False,
    )


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return class_index(y, class_names(spec))


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """`predicted`: probabilities [N, C]; the label is the most probable class."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    result, decisions, _ = probabilities_score(y, predicted, threshold)
    result["macro_f1"] = m.f1_score(y, decisions, average="macro")
    return rounded(result)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {"confusion.png": ("confusion", (y, decided(predicted, threshold), class_names(spec)))}


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    classes = class_names(served.spec)
    return [
        {"label": classes[int(lab)], "probabilities": dict(zip(classes, p, strict=True))}
        for lab, p in zip(
            result["label"].reshape(-1).tolist(), result["probabilities"].tolist(), strict=True
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """P(top class) and the class."""
    probabilities = prediction.get("probabilities") or {}
    top = max(probabilities.values()) if probabilities else None
    return {SCORE: top, LABEL: prediction.get("label")}


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
    """What it was: the class name (or its index)."""
    return label_outcome(class_names(spec))


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """`score` of the served class probabilities against the outcomes."""
    names = class_names(spec)
    probabilities = np.asarray([[p["probabilities"][n] for n in names] for p in predictions])
    return labelled_score(score, spec, class_indices(outcomes, names), probabilities, None)


def evidently_view(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> tuple[Any, Any, Any]:
    """Evidently's classification preset over the served labels."""
    return labels_view(class_names(spec), [p["label"] for p in predictions], outcomes)
