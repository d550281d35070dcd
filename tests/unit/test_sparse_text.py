"""The sparse TF-IDF + logistic graph gives sklearn's probabilities, without the dense chain."""

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from pipelines.flavors.sparse_text import sparsify

WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "tasty",
    "stale",
    "fresh",
    "cheap",
    "pricey",
    "the",
    "a",
    "not",
    "very",
]
TRICKY = ["", " ", "###", "a", "not", "Good GOOD good", "é great 日本 ünï", "!!! ???", "x y z"]


def _corpus(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(0, 40))) for _ in range(count)]
    labels = np.array([("good" in t or "great" in t) and "not" not in t for t in texts], int)
    return texts, labels


def _graphs(ngrams: tuple[int, int], classes: int = 2) -> tuple[Pipeline, onnx.ModelProto]:
    texts, labels = _corpus(400, 0)
    if classes > 2:
        labels = labels + np.array(["bad" in t for t in texts], int)
    tfidf = TfidfVectorizer(token_pattern=r"(?a)\b\w\w+\b", ngram_range=ngrams, min_df=2)
    model = Pipeline(
        [
            ("features", ColumnTransformer([("tfidf", tfidf, "text")])),
            ("model", LogisticRegression()),
        ]
    ).fit(pd.DataFrame({"text": texts}), labels)
    graph = to_onnx(
        model,
        initial_types=[("text", StringTensorType([None, 1]))],
        target_opset={"": 18, "ai.onnx.ml": 3},
        options={
            id(model["features"].named_transformers_["tfidf"]): {
                "tokenexp": r"\b\w\w+\b",
                "locale": "C.UTF-8",
            },
            id(model): {"zipmap": False},
        },
    )
    return model, graph


def _run(graph: onnx.ModelProto, texts: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"text": np.array(texts, dtype=object).reshape(-1, 1)})


@pytest.mark.parametrize("ngrams", [(1, 1), (1, 2)])
def test_sparse_graph_scores_as_sklearn(ngrams: tuple[int, int]) -> None:
    model, graph = _graphs(ngrams)
    dense = onnx.ModelProto()
    dense.CopyFrom(graph)
    sparse = sparsify(graph)
    ops = {node.op_type for node in sparse.graph.node}
    assert not ops & {"TfIdfVectorizer", "Normalizer", "LinearClassifier"}
    texts = _corpus(300, 1)[0] + TRICKY
    expected = model.predict_proba(pd.DataFrame({"text": texts}))
    label, probabilities = _run(sparse, texts)
    assert probabilities.shape == (len(texts), 2) and label.shape == (len(texts),)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(label, _run(dense, texts)[0])
    for text in TRICKY:  # one record alone: the batch's padding is not what makes it right
        np.testing.assert_allclose(_run(sparse, [text])[1], _run(dense, [text])[1], atol=1e-6)
    unknown = ["", "zz qq"]  # no known term: a zero vector, the intercept alone
    np.testing.assert_allclose(
        _run(sparse, unknown)[1], model.predict_proba(pd.DataFrame({"text": unknown})), atol=1e-6
    )


def test_other_graphs_are_left_as_they_are() -> None:
    _, graph = _graphs((1, 2), classes=3)  # multinomial: no single logistic margin
    before = graph.SerializeToString()
    assert sparsify(graph).SerializeToString() == before
