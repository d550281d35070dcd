"""Spam email: class-weighted boosted trees on message counts, threshold tuned for precision.

A legitimate message sent to the spam folder costs its reader more than a spam left in the
inbox, so the served label uses the decision threshold that maximises F-beta with beta < 1
(precision weighs 1/beta^2 times as much as recall), chosen by cross-validation on the
training split and exported inside the graph. Classes are weighted because spam is one
message in eleven.
"""

from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import fbeta_score, make_scorer
from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV
from sklearn.pipeline import Pipeline

from pipelines.catalog import ModelSpec
from pipelines.flavors import sklearn as FLAVOR
from pipelines.models.tabular import preprocessor, to_float32

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    params = dict(spec.params)
    beta = params.pop("threshold_beta")
    folds = params.pop("threshold_folds")
    trees = HistGradientBoostingClassifier(class_weight="balanced", **params)
    tuned = TunedThresholdClassifierCV(
        trees,
        scoring=make_scorer(fbeta_score, beta=beta),
        cv=StratifiedKFold(folds, shuffle=True, random_state=params["random_state"]),
        random_state=params["random_state"],
    )
    return Pipeline(
        [
            ("features", preprocessor(spec, min_frequency=1)),
            ("float32", to_float32()),
            ("model", tuned),
        ]
    )
