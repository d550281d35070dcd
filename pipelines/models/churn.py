"""Telco churn: boosted trees with sigmoid (Platt) probability calibration."""

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline

from pipelines.catalog import ModelSpec
from pipelines.flavors import sklearn as FLAVOR
from pipelines.models.tabular import preprocessor, to_float32

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    params = dict(spec.params)
    # Sigmoid, not isotonic: ONNX Runtime reproduces it to 1e-7 (isotonic steps drift ~1e-2).
    calibration = {
        "method": params.pop("calibration", "sigmoid"),
        "cv": params.pop("calibration_folds", 5),
    }
    trees = HistGradientBoostingClassifier(**params)
    return Pipeline(
        [
            ("features", preprocessor(spec)),
            ("float32", to_float32()),
            ("model", CalibratedClassifierCV(trees, **calibration)),
        ]
    )
