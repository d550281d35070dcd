"""Spam email: class-weighted boosted trees on message counts, threshold tuned for precision.

A legitimate message sent to the spam folder costs its reader more than a spam left in the
inbox, so the served label uses the decision threshold that maximises F-beta with beta < 1
(precision weighs 1/beta^2 times as much as recall), chosen by cross-validation on the
training split and exported inside the graph. Classes are weighted because spam is one
message in eleven.
"""

from sklearn.metrics import fbeta_score, make_scorer
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import threshold_tuned_trees
from pipelines.flavors import sklearn as FLAVOR

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    params = dict(spec.params)
    scoring = make_scorer(fbeta_score, beta=params.pop("threshold_beta"))
    return threshold_tuned_trees(spec, params, scoring, min_frequency=1)
