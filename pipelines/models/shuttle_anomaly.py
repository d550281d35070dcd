"""Shuttle anomalies: an Isolation Forest on nine sensor readings, fitted without labels.

The forest isolates each reading by random splits; rare readings are isolated in fewer
splits and score higher. Training never sees the labels (the flavor fits anomaly tasks on
the fields alone); they only judge the scores on the held-out split. `contamination` is the
share of readings the operator expects to be anomalous: it sets the decision threshold on
the training scores, and the graph applies it (label 1 above it).
"""

from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import preprocessor
from pipelines.flavors import sklearn as FLAVOR
from pipelines.flavors.onnx_ops import to_float32

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    return Pipeline(
        [
            ("features", preprocessor(spec)),
            ("float32", to_float32()),
            ("model", IsolationForest(**spec.params)),
        ]
    )
