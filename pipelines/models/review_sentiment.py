"""Fine-food review sentiment: TF-IDF (word uni+bigrams) and logistic regression, raw text in."""

from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.flavors import sklearn as FLAVOR

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    p = spec.params
    # ASCII word tokens: Python's (?a)\w is exactly RE2's \w, so ONNX tokenizes identically.
    # No sublinear_tf (skl2onnx does not convert it), no max_features (see check_ngram_vocabulary).
    tfidf = TfidfVectorizer(
        token_pattern=r"(?a)\b\w\w+\b",
        ngram_range=tuple(p["ngram_range"]),
        min_df=p["min_df"],
    )
    linear = LogisticRegression(
        C=p["C"], max_iter=p["max_iter"], class_weight=p.get("class_weight")
    )
    (text,) = spec.fields
    return Pipeline([("features", ColumnTransformer([("tfidf", tfidf, text)])), ("model", linear)])
