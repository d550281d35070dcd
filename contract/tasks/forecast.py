"""Forecasting: the series of the horizon after each record's origin (energy_forecast).
A record is a forecast origin; the target is the `target.horizon` values after it, and the
test split is the rows after the training rows in time."""

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
    rounded,
    series_checks,
    served_as_is,
    whole_graph_card,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view
from contract.tasks.outcomes import quietly, series_outcome

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "payload", "targets"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, False, False
# a request holds the history, not the origin's time that orders the training records
LEARNS_FROM_OUTCOMES = False
NATIVE = "values"  # [N, horizon]
RELATIVE_PARITY = True
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = True
DISCRETE_TARGET = False  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = ""

# what it shares with other task kinds (contract/tasks/common.py)
class_names = no_class_names
labels = no_labels
card = whole_graph_card


def validate(spec: "ModelSpec") -> None:
    if not (spec.target.horizon and spec.target.time):
        raise ValueError("a forecast task needs target.horizon and target.time")
    if spec.split != "source" and spec.split.shuffle:
        raise ValueError("a forecast is tested on the rows after its training rows: shuffle false")


def series(column: pd.Series) -> np.ndarray:
    """A column of equal-length sequences as one float64 array [N, length]."""
    if not len(column):
        return np.zeros((0, 0))
    return np.stack([np.asarray(v, dtype=np.float64) for v in column])


def target_column(spec: "ModelSpec") -> Any:
    """The series of the horizon after the origin."""
    import pandera.pandas as pa

    return pa.Column(checks=series_checks(spec.target.horizon or 0, None, None), nullable=False)


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return series(y)  # [N, horizon]


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Every step of every origin's horizon [N, horizon]."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    actual, forecast = y.reshape(-1), predicted.reshape(-1)
    result = {
        "mape": m.mean_absolute_percentage_error(actual, forecast),
        "rmse": m.root_mean_squared_error(actual, forecast),
        "mae": m.mean_absolute_error(actual, forecast),
        "worst_day_mape": np.abs(predicted - y).__truediv__(y).mean(axis=1).max(),
    }
    return rounded(result)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {
        "forecast_week.png": ("forecast_week", (views["week"],)),
        "mape_by_month.png": ("mape_by_month", (views["by_month"],)),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    return [{"forecast": row} for row in result["forecast"].tolist()]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The mean over the horizon."""
    steps = prediction.get("forecast") or []
    return {SCORE: sum(steps) / len(steps) if steps else None}


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("forecast",)
serve = served_as_is
decisive = no_margin


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "forecast", vector=False)


def outcome(spec: "ModelSpec") -> Any:
    """The observed series over the horizon after the origin."""
    return series_outcome(spec.target.horizon or 0)


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """`score` of the served forecasts against what was observed."""
    forecasts = np.asarray([p["forecast"] for p in predictions], dtype=np.float64)
    return quietly(score, spec, np.asarray(outcomes, dtype=np.float64), forecasts)


def true_outcomes(frame: pd.DataFrame, spec: "ModelSpec") -> list[Any]:
    """Held-out rows' targets as /feedback takes them (the load test, the loop demo)."""
    return list(series(frame[spec.target.column]).tolist())
