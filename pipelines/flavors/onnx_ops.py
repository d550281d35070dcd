"""What converting scikit-learn pipelines to ONNX shares: the opsets, the graph's inputs
(one tensor per catalog field), and feature steps that skl2onnx does not ship, each with its
ONNX converter.

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
    OnnxLess,
    OnnxMatMul,
    OnnxMul,
    OnnxNeg,
    OnnxReshape,
    OnnxTreeEnsembleRegressor_1,
    OnnxWhere,
)
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
from skl2onnx.sklapi import CastTransformer
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length
from sklearn.model_selection import TunedThresholdClassifierCV
from sklearn.tree._tree import TREE_LEAF

from contract.catalog import ModelSpec
from contract.feeds import NUMERIC

TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}


def field_types(spec: ModelSpec) -> list[tuple[str, Any]]:
    """The graph's inputs: float32 [N, 1] numbers, strings [N, 1] categories and texts."""
    return [
        (name, FloatTensorType([None, 1]) if f.type in NUMERIC else StringTensorType([None, 1]))
        for name, f in spec.fields.items()
    ]


def to_float32() -> CastTransformer:
    """Trees see float32 natively too, so ONNX (float32 tree ensembles) matches exactly."""
    return CastTransformer(dtype=np.float32)


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


def _isolation_forest_shape(operator: Any) -> None:
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = Int64TensorType([rows, 1])
    operator.outputs[1].type = FloatTensorType([rows, 1])


def _convert_isolation_forest(scope: Any, operator: Any, container: Any) -> None:
    """IsolationForest as ONE TreeEnsembleRegressor: each leaf holds the path length a record
    ending there adds (its depth plus the expected depth of the samples left in it, sklearn's
    own per-leaf values), summed over the trees; then sklearn's score, 2^(-mean/c(n)).

    skl2onnx's converter builds ~27 nodes per tree (5,400 for 200 trees): one record took
    6-8 ms of CPU in ONNX Runtime, node by node. Outputs: label (-1 anomaly, 1 normal) and
    sklearn's decision_function."""
    op, opv = operator.raw_operator, container.target_opset
    width = operator.inputs[0].get_second_dimension()
    subsample = op._max_features != width  # as sklearn: trees see their own columns then
    ensemble: dict[str, list[Any]] = {
        k: []
        for k in [
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        ]
    }
    for t, (tree, features) in enumerate(zip(op.estimators_, op.estimators_features_, strict=True)):
        nodes = tree.tree_
        leaf_values = op._decision_path_lengths[t] + op._average_path_length_per_tree[t] - 1.0
        for node in range(nodes.node_count):
            leaf = nodes.children_left[node] == TREE_LEAF
            feature = 0 if leaf else int(nodes.feature[node])
            ensemble["nodes_treeids"].append(t)
            ensemble["nodes_nodeids"].append(node)
            ensemble["nodes_featureids"].append(int(features[feature]) if subsample else feature)
            ensemble["nodes_values"].append(0.0 if leaf else float(nodes.threshold[node]))
            ensemble["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            ensemble["nodes_truenodeids"].append(0 if leaf else int(nodes.children_left[node]))
            ensemble["nodes_falsenodeids"].append(0 if leaf else int(nodes.children_right[node]))
            if leaf:
                ensemble["target_treeids"].append(t)
                ensemble["target_nodeids"].append(node)
                ensemble["target_ids"].append(0)
                ensemble["target_weights"].append(float(leaf_values[node]))
    depth = OnnxTreeEnsembleRegressor_1(
        OnnxCast(operator.inputs[0], to=TensorProto.FLOAT, op_version=opv),
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        op_version=1,
        **ensemble,
    )
    denominator = len(op.estimators_) * float(_average_path_length([op._max_samples])[0])
    # 2^(-depth / denominator) = exp(depth * -ln 2 / denominator); score_samples is minus it
    exponent = OnnxMul(depth, np.array([-np.log(2.0) / denominator], np.float32), op_version=opv)
    score_samples = OnnxNeg(OnnxExp(exponent, op_version=opv), op_version=opv)
    decision = OnnxAdd(
        score_samples,
        np.array([-op.offset_], np.float32),
        op_version=opv,
        output_names=operator.outputs[1:2],
    )
    label = OnnxWhere(
        OnnxLess(decision, np.array([0.0], np.float32), op_version=opv),
        np.array([-1], np.int64),
        np.array([1], np.int64),
        op_version=opv,
        output_names=operator.outputs[:1],
    )
    decision.add_to(scope, container)
    label.add_to(scope, container)


def register() -> None:
    update_registered_converter(
        IsolationForest,
        "SklearnIsolationForest",
        _isolation_forest_shape,
        _convert_isolation_forest,
        options={"score_samples": [False]},  # skl2onnx's parser asks; the graph adds its own
    )
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
