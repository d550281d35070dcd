"""Regression: a value per record (house prices), optionally fitted on log(target)."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    WHOLE_GRAPH,
    Plot,
    Served,
    no_labels,
    output_as_native,
    regression_metrics,
    served_as_is,
)
from contract.tasks.common import no_payload_change as payload

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["payload"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, False, False
NATIVE = "values"
RELATIVE_PARITY = True
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = True
DISCRETE_TARGET = False  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = "neg_root_mean_squared_error"


def validate(spec: "ModelSpec") -> None:
    pass


def class_names(spec: "ModelSpec") -> list[str]:
    return []


def target_column(spec: "ModelSpec") -> Any:
    import pandera.pandas as pa

    checks = [pa.Check.gt(0)] if spec.target.transform == "log" else []
    return pa.Column(checks=checks, nullable=False)


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return y.to_numpy(dtype=np.float64)


def labels(predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    raise TypeError("a regression serves values, not labels")


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


def summarize(spec: "ModelSpec", result: dict[str, np.ndarray]) -> tuple[list[float], list[str]]:
    """The predicted value."""
    if "prediction" not in result:
        return [], []
    return result["prediction"].reshape(-1).tolist(), []


def card(spec: "ModelSpec") -> dict[str, str]:
    return {"target": "", "artifact": WHOLE_GRAPH}


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("prediction",)
serve = served_as_is
decisive = no_labels


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "prediction", vector=True)
