"""Fine-food review sentiment: TF-IDF (word uni+bigrams) and logistic regression, raw text in."""

from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.text import tfidf_logistic
from pipelines.flavors import sklearn as FLAVOR

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    return tfidf_logistic(spec)
