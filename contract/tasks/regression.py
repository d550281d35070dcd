"""Regression: a value per record (house prices), optionally fitted on log(target)."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    SCORE,
    Plot,
    Served,
    no_class_names,
    no_labels,
    no_margin,
    output_as_native,
    regression_metrics,
    served_as_is,
    whole_graph_card,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import quietly, value_outcome, values_view
from contract.tasks.outcomes import value_targets as targets

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["payload", "targets"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, False, False
LEARNS_FROM_OUTCOMES = True
NATIVE = "values"
RELATIVE_PARITY = True
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = True
DISCRETE_TARGET = False  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = "neg_root_mean_squared_error"

# what it shares with other task kinds (contract/tasks/common.py)
class_names = no_class_names
labels = no_labels
card = whole_graph_card


def validate(spec: "ModelSpec") -> None:
    pass


def target_column(spec: "ModelSpec") -> Any:
    import pandera.pandas as pa

    checks = [pa.Check.gt(0)] if spec.target.transform == "log" else []
    return pa.Column(checks=checks, nullable=False)


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return y.to_numpy(dtype=np.float64)


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    return regression_metrics(spec, y, predicted)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {"residuals.png": ("residuals", (y, predicted))}


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    return [{"value": v} for v in result["prediction"].reshape(-1).tolist()]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The predicted value."""
    return {SCORE: prediction.get("value")}


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("prediction",)
serve = served_as_is
decisive = no_margin


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "prediction", vector=True)


def outcome(spec: "ModelSpec") -> Any:
    """The true value (positive where the model is fitted on its logarithm)."""
    return value_outcome(positive=spec.target.transform == "log")


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """`score` of the served values against the true ones."""
    values = np.asarray([p["value"] for p in predictions], dtype=np.float64)
    return quietly(score, spec, np.asarray(outcomes, dtype=np.float64), values)


def true_outcomes(frame: pd.DataFrame, spec: "ModelSpec") -> list[Any]:
    """Held-out rows' targets as /feedback takes them (the load test, the loop demo)."""
    return [float(v) for v in frame[spec.target.column]]


def evidently_view(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> tuple[Any, Any, Any]:
    """Evidently's regression preset over the served values."""
    return values_view([p["value"] for p in predictions], outcomes)
