"""Ames house prices: gradient-boosted trees fitted on log(price), price out of the graph."""

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import preprocessor
from pipelines.flavors import sklearn as FLAVOR
from pipelines.flavors.onnx_ops import to_float32

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    gbm = HistGradientBoostingRegressor(**spec.params)
    return Pipeline(
        [
            ("features", preprocessor(spec)),
            ("float32", to_float32()),
            ("model", TransformedTargetRegressor(regressor=gbm, func=np.log, inverse_func=np.exp)),
        ]
    )
