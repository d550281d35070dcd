"""Text classification: TF-IDF over word uni- and bigrams into a linear classifier.

Raw text in, as served: the graph tokenizes with ONNX Runtime's RE2 tokenizer, and the
sklearn flavor rewrites TF-IDF + logistic regression into a sparse per-token graph
(pipelines/flavors/sparse_text.py), whose vocabulary check this estimator satisfies.
"""

from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec


def tfidf_logistic(spec: ModelSpec) -> Pipeline:
    """TF-IDF of the one text field (`ngram_range`, `min_df`) into logistic regression
    (`C`, `max_iter`, `class_weight`), from the catalog entry's params."""
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
