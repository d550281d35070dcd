"""Feature steps that skl2onnx does not ship, each with its ONNX converter.

`register()` adds the converters to skl2onnx's registry; export calls it (never import time).
"""

from typing import Any

import numpy as np
from onnx import TensorProto
from skl2onnx import update_registered_converter
from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
from skl2onnx.algebra.onnx_ops import (
    OnnxAdd,
    OnnxCast,
    OnnxExp,
    OnnxGather,
    OnnxGreaterOrEqual,
    OnnxIdentity,
    OnnxMatMul,
    OnnxReshape,
)
from skl2onnx.common.data_types import FloatTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.model_selection import TunedThresholdClassifierCV


class LinearCombination(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """One engineered column: X @ weights + bias (e.g. family size = sibsp + parch + 1)."""

    def __init__(self, weights: tuple[float, ...] = (1.0,), bias: float = 0.0) -> None:
        self.weights = weights
        self.bias = bias

    def fit(self, X: Any, y: Any = None) -> "LinearCombination":
        self.n_features_in_ = len(self.weights)
        return self

    def transform(self, X: Any) -> np.ndarray:
        values = np.asarray(X, dtype=np.float32)
        return values @ np.asarray(self.weights, np.float32)[:, None] + np.float32(self.bias)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(["linear_combination"], dtype=object)


def _linear_combination_shape(operator: Any) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows, 1])


def _convert_linear_combination(scope: Any, operator: Any, container: Any) -> None:
    op, opv = operator.raw_operator, container.target_opset
    weights = np.asarray(op.weights, np.float32)[:, None]
    x = OnnxCast(operator.inputs[0], to=TensorProto.FLOAT, op_version=opv)
    total = OnnxAdd(
        OnnxMatMul(x, weights, op_version=opv),
        np.array([op.bias], np.float32),
        op_version=opv,
        output_names=operator.outputs[:1],
    )
    total.add_to(scope, container)


def _convert_log_target(scope: Any, operator: Any, container: Any) -> None:
    """TransformedTargetRegressor(func=np.log, inverse_func=np.exp): the regressor, then Exp."""
    op, opv = operator.raw_operator, container.target_opset
    if op.func is not np.log or op.inverse_func is not np.exp:
        raise NotImplementedError("only func=np.log, inverse_func=np.exp converts to ONNX")
    inner = OnnxSubEstimator(op.regressor_, operator.inputs[0], op_version=opv)
    OnnxExp(inner, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)


def _convert_tuned_threshold(scope: Any, operator: Any, container: Any) -> None:
    """TunedThresholdClassifierCV: the inner classifier, label = P(positive) >= threshold.

    skl2onnx 1.20 ships a converter for it that silently drops the threshold (the label is
    the inner classifier's argmax), so the served decision would not be the tuned one.
    """
    op, opv = operator.raw_operator, container.target_opset
    if len(op.classes_) != 2:  # the scorers here decide on the second class (the positive)
        raise NotImplementedError("only binary TunedThresholdClassifierCV converts")
    inner = OnnxSubEstimator(
        op.estimator_, operator.inputs[0], op_version=opv, options={"zipmap": False}
    )
    proba = OnnxIdentity(inner[1], op_version=opv, output_names=operator.outputs[1:2])
    positive = OnnxGather(proba, np.array([1], np.int64), axis=1, op_version=opv)
    decided = OnnxGreaterOrEqual(
        positive, np.array([op.best_threshold_], np.float32), op_version=opv
    )
    label = OnnxCast(
        OnnxReshape(decided, np.array([-1], np.int64), op_version=opv),
        to=TensorProto.INT64,
        op_version=opv,
        output_names=operator.outputs[:1],
    )
    proba.add_to(scope, container)
    label.add_to(scope, container)


def register() -> None:
    update_registered_converter(
        TunedThresholdClassifierCV,
        "SklearnTunedThresholdClassifierCV",
        calculate_linear_classifier_output_shapes,
        _convert_tuned_threshold,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        LinearCombination,
        "ReferenceLinearCombination",
        _linear_combination_shape,
        _convert_linear_combination,
    )
    update_registered_converter(
        TransformedTargetRegressor,
        "SklearnTransformedTargetRegressor",
        calculate_linear_regressor_output_shapes,
        _convert_log_target,
    )
