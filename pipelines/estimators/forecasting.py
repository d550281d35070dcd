"""Day-ahead forecasting with boosted trees: one record per forecast origin (midnight).

A record holds what is known at the origin: the last `history` steps of the series (oldest
first), the day's forecast temperature per step, whether it is a working day, and the day
of the week. The model predicts each of the `horizon` steps after the origin from the step's
slot, the calendar, the temperature (and its square: demand rises for heat and for cold)
and lags that are all at or before the origin: the same step one, two, three and seven days
earlier, and the last value seen. Nothing after the origin is an input, so training rows and
served records are built the same way and nothing leaks.

The same features are built inside the ONNX graph (Gather, Expand, Concat on the record's
tensors), so the served graph takes the record as it comes.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.inspection import permutation_importance

from contract.catalog import ModelSpec
from contract.tasks import forecast as forecast_task
from contract.tasks.forecast import series
from pipelines.flavors import onnx_ops
from pipelines.schema import model_frame

DAY_LAGS = (1, 2, 3, 7)  # the same step this many days before the forecast day


@dataclass(frozen=True)
class Layout:
    """Which record fields play which part (the catalog entry's names)."""

    history: str  # series [steps_back]
    temperature: str  # series [horizon]
    workday: str  # 0/1
    day_of_week: str  # 0 = Monday


FEATURES = ["slot", "day_of_week", "workday", "temperature", "temperature_sq",
            *(f"lag_{d}d" for d in DAY_LAGS), "last_value"]  # fmt: skip


class DayAheadForecaster(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Boosted trees on one row per (origin, step); fit(records, Y [N, horizon])."""

    def __init__(
        self,
        layout: Layout,
        horizon: int = 48,
        steps_per_day: int = 48,
        learning_rate: float = 0.05,
        max_iter: int = 400,
        max_leaf_nodes: int = 31,
        min_samples_leaf: int = 20,
        l2_regularization: float = 0.0,
        random_state: int = 0,
    ) -> None:
        self.layout, self.horizon, self.steps_per_day = layout, horizon, steps_per_day
        self.learning_rate, self.max_iter = learning_rate, max_iter
        self.max_leaf_nodes, self.min_samples_leaf = max_leaf_nodes, min_samples_leaf
        self.l2_regularization, self.random_state = l2_regularization, random_state

    def long_features(self, records: pd.DataFrame) -> np.ndarray:
        """[N * horizon, len(FEATURES)]: the rows the trees see, origin by origin."""
        history = series(records[self.layout.history])
        temperature = series(records[self.layout.temperature])
        n, back = history.shape
        steps = np.arange(self.horizon)

        def per_step(name: str) -> np.ndarray:  # one value per record, repeated per step
            return np.repeat(records[name].to_numpy(np.float64)[:, None], self.horizon, 1)

        columns = [
            np.tile(steps % self.steps_per_day, (n, 1)),
            per_step(self.layout.day_of_week),
            per_step(self.layout.workday),
            temperature,
            temperature**2,
            *(history[:, back - d * self.steps_per_day + steps] for d in DAY_LAGS),
            np.repeat(history[:, -1:], self.horizon, 1),
        ]  # fmt: skip
        return np.stack(columns, axis=2).reshape(n * self.horizon, len(FEATURES))

    def fit(self, records: pd.DataFrame, y: np.ndarray) -> "DayAheadForecaster":
        back = len(records[self.layout.history].iloc[0])
        if back < max(DAY_LAGS) * self.steps_per_day:
            raise ValueError(f"{self.layout.history} must hold {max(DAY_LAGS)} days of steps")
        self.trees_ = HistGradientBoostingRegressor(
            learning_rate=self.learning_rate,
            max_iter=self.max_iter,
            max_leaf_nodes=self.max_leaf_nodes,
            min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization,
            early_stopping=False,
            random_state=self.random_state,
        )
        # float32 features: the ONNX trees compare in float32, so the two agree exactly
        self.trees_.fit(self.long_features(records).astype(np.float32), np.asarray(y).reshape(-1))
        self.history_length_ = back
        return self

    def predict(self, records: pd.DataFrame) -> np.ndarray:
        flat = self.trees_.predict(self.long_features(records).astype(np.float32))
        return np.asarray(flat, dtype=np.float64).reshape(len(records), self.horizon)

    def export_onnx(self, model: "DayAheadForecaster", spec: ModelSpec) -> onnx.ModelProto:
        """The record tensors (series [N, length], numbers [N, 1]) through the feature
        builder and the trees to `forecast` [N, horizon]."""
        trees = skl_to_onnx(
            self.trees_,
            initial_types=[("tree_features", FloatTensorType([None, len(FEATURES)]))],
            target_opset=onnx_ops.TARGET_OPSET,
            final_types=[("variable", FloatTensorType([None, 1]))],
        )
        inputs = [
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [None, (f.shape or [1])[0] if f.type == "series" else 1]
            )
            for name, f in spec.fields.items()
        ]
        return forecast_onnx(self, trees, inputs)

    def importance(
        self, model: "DayAheadForecaster", test: pd.DataFrame, spec: ModelSpec
    ) -> pd.DataFrame:
        """Permutation importance of the features the trees read (lags, calendar, weather)."""
        X = self.long_features(model_frame(test, spec)).astype(np.float32)
        result = permutation_importance(
            self.trees_,
            X,
            forecast_task.encode_target(test[spec.target.column], spec).reshape(-1),
            scoring="neg_mean_absolute_percentage_error",
            n_repeats=3,
            random_state=0,
            n_jobs=1,
        )
        table = pd.DataFrame({"feature": FEATURES, "importance": result.importances_mean})
        table = table.sort_values("importance", ascending=False, ignore_index=True)
        table.attrs["measure"] = "rise in MAPE when the built feature is shuffled"
        return table

    def report(
        self,
        model: "DayAheadForecaster",
        spec: ModelSpec,
        train: pd.DataFrame,
        test: pd.DataFrame,
        predicted: np.ndarray,
        refit: Callable[[pd.DataFrame, pd.DataFrame], np.ndarray],
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """(views, metrics) of evaluate: against the seasonal-naive baseline, and
        walk-forward (`report`)."""
        return report(spec, self, refit, train, test, predicted)


def seasonal_naive(records: pd.DataFrame, history: str, horizon: int, period: int) -> np.ndarray:
    """The baseline: each step as it was one `period` (a week) before, from the record."""
    past = series(records[history])
    start = past.shape[1] - period
    return past[:, start : start + horizon]


def features_graph(model: DayAheadForecaster, inputs: dict[str, str]) -> list[Any]:
    """(nodes, initializers) that turn the record tensors into `features` [N * horizon, F].

    `inputs`: the graph's input name per layout role; numbers come as [N, 1] float32,
    series as [N, length] float32."""
    h, layout = model.horizon, model.layout
    back = model.history_length_
    steps = np.arange(h)
    consts: dict[str, np.ndarray] = {
        "fc_slots": (steps % model.steps_per_day).astype(np.float32).reshape(1, h, 1),
        "fc_axis2": np.array([2], np.int64),
        "fc_tail": np.array([h, 1], np.int64),
        "fc_zero": np.array([0], np.int64),
        "fc_one": np.array([1], np.int64),
        "fc_last": np.array([back - 1], np.int64),
        "fc_flat": np.array([-1, len(FEATURES)], np.int64),
        **{
            f"fc_lag_{d}d": (back - d * model.steps_per_day + steps).astype(np.int64)
            for d in DAY_LAGS
        },
    }
    node = helper.make_node
    nodes = [
        node("Shape", [inputs[layout.temperature]], ["fc_shape"]),
        node("Slice", ["fc_shape", "fc_zero", "fc_one"], ["fc_n"]),
        node("Concat", ["fc_n", "fc_tail"], ["fc_expand_to"], axis=0),  # [N, h, 1]
        node("Expand", ["fc_slots", "fc_expand_to"], ["f_slot"]),
    ]
    for role, name in (("day_of_week", layout.day_of_week), ("workday", layout.workday)):
        nodes += [  # [N, 1] -> [N, 1, 1] -> [N, h, 1]
            node("Unsqueeze", [inputs[name], "fc_axis2"], [f"fc_{role}_3d"]),
            node("Expand", [f"fc_{role}_3d", "fc_expand_to"], [f"f_{role}"]),
        ]
    nodes += [
        node("Unsqueeze", [inputs[layout.temperature], "fc_axis2"], ["f_temperature"]),
        node("Mul", ["f_temperature", "f_temperature"], ["f_temperature_sq"]),
    ]
    for d in DAY_LAGS:
        nodes += [
            node("Gather", [inputs[layout.history], f"fc_lag_{d}d"], [f"fc_lag_{d}d_2d"], axis=1),
            node("Unsqueeze", [f"fc_lag_{d}d_2d", "fc_axis2"], [f"f_lag_{d}d"]),
        ]
    nodes += [
        node("Gather", [inputs[layout.history], "fc_last"], ["fc_last_2d"], axis=1),  # [N, 1]
        node("Unsqueeze", ["fc_last_2d", "fc_axis2"], ["fc_last_3d"]),
        node("Expand", ["fc_last_3d", "fc_expand_to"], ["f_last_value"]),
        node("Concat", [f"f_{name}" for name in FEATURES], ["fc_features_3d"], axis=2),
        node("Reshape", ["fc_features_3d", "fc_flat"], ["features"]),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    return [nodes, initializers]


def forecast_onnx(
    model: DayAheadForecaster, trees: onnx.ModelProto, inputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    """The trees' graph (input `features` [N * h, F], output `variable`) behind the feature
    builder, reshaped to `forecast` [N, h]."""
    names = {i.name: i.name for i in inputs}
    nodes, initializers = features_graph(model, names)
    body = trees.graph
    (tree_input,) = [i.name for i in body.input]
    for n in body.node:  # the trees read the built features
        n.input[:] = ["features" if name == tree_input else name for name in n.input]
    (tree_output,) = [o.name for o in body.output]
    reshape = helper.make_node("Reshape", [tree_output, "fc_forecast_shape"], ["forecast"])
    initializers.append(numpy_helper.from_array(np.array([-1, model.horizon], np.int64),
                                                "fc_forecast_shape"))  # fmt: skip
    all_nodes = [*nodes, *body.node, reshape]
    del body.node[:]
    body.node.extend(all_nodes)
    body.initializer.extend(initializers)
    del body.input[:]
    body.input.extend(inputs)
    del body.output[:]
    body.output.append(
        helper.make_tensor_value_info("forecast", TensorProto.FLOAT, [None, model.horizon])
    )
    return trees


def walk_forward(
    fit_predict: Any, train: pd.DataFrame, test: pd.DataFrame, time: str
) -> pd.DataFrame:
    """Month by month through `test`: refit on every record before the month (`fit_predict(
    history_records, month_records) -> forecasts`), forecast the month. One row per record:
    its time and forecast [horizon]."""
    months = test[time].dt.to_period("M")
    out = []
    for month in months.unique():
        known = pd.concat([train, test[months < month]])
        target = test[months == month]
        out.append(pd.DataFrame({time: target[time].to_numpy(),
                                 "forecast": list(fit_predict(known, target))}))  # fmt: skip
    return pd.concat(out, ignore_index=True)


def by_month(
    test: pd.DataFrame, time: str, y: np.ndarray, forecasts: dict[str, np.ndarray]
) -> pd.DataFrame:
    """MAPE per month of the test records for each named forecast [N, horizon]."""
    months = test[time].dt.to_period("M").astype(str).to_numpy()
    rows = []
    for month in dict.fromkeys(months):
        mask = months == month
        row: dict[str, Any] = {"month": month, "days": int(mask.sum())}
        for name, forecast in forecasts.items():
            row[name] = float(np.mean(np.abs(forecast[mask] - y[mask]) / y[mask]))
        rows.append(row)
    return pd.DataFrame(rows)


def report(
    spec: ModelSpec,
    model: DayAheadForecaster,
    refit: Callable[[pd.DataFrame, pd.DataFrame], np.ndarray],
    train: pd.DataFrame,
    test: pd.DataFrame,
    predicted: np.ndarray,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(plot data, metrics): the seasonal-naive baseline (each step a week before) and a
    walk-forward run that refits (`refit(known, target)`) on everything before each test
    month."""
    assert spec.target.time
    time, y = spec.target.time, forecast_task.encode_target(test[spec.target.column], spec)
    naive = seasonal_naive(test, model.layout.history, model.horizon, 7 * model.steps_per_day)
    walked = walk_forward(refit, train, test, time)
    walk = np.stack(walked["forecast"].to_list())
    mape = forecast_task.score(spec, y, predicted)["mape"]
    naive_mape = forecast_task.score(spec, y, naive)["mape"]
    walk_mape = forecast_task.score(spec, y, walk)["mape"]
    metrics = {
        "naive_mape": naive_mape,
        "improvement_over_naive": round(1 - mape / naive_mape, 6),
        "walk_forward_mape": walk_mape,
        "walk_forward_improvement": round(1 - walk_mape / naive_mape, 6),
    }
    table = by_month(
        test, time, y, {"model": predicted, "walk-forward": walk, "seasonal naive": naive}
    )
    week = slice(0, 7)
    views = {
        "by_month": table,
        "week": {
            "start": test[time].iloc[0],
            "actual": y[week].reshape(-1),
            "model": predicted[week].reshape(-1),
            "seasonal naive": naive[week].reshape(-1),
        },
    }
    return views, metrics
