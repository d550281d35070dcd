"""Our converters reproduce the native steps in ONNX Runtime; parity failures are caught."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest

from pipelines.cli import StageError
from pipelines.estimators.clustering import SilhouetteKMeans
from pipelines.export import check_parity
from pipelines.flavors import onnx_ops
from pipelines.flavors.sklearn import RAW_SCORES, anomaly_outputs
from tests.conftest import CATALOG


def run(model: object, x: np.ndarray) -> np.ndarray:
    onnx_ops.register()
    graph = to_onnx(
        model,
        initial_types=[("x", FloatTensorType([None, x.shape[1]]))],
        target_opset={"": 18, "ai.onnx.ml": 3},
    )
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_linear_combination_matches_in_onnx() -> None:
    x = np.array([[0, 0], [1, 2], [3, 5]], dtype=np.float32)
    step = onnx_ops.LinearCombination(weights=(1.0, 1.0), bias=1.0).fit(x)
    assert step.transform(x).ravel().tolist() == [1.0, 4.0, 9.0]
    assert np.array_equal(run(step, x), step.transform(x))


def test_log_target_regressor_matches_in_onnx() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.exp(10 + x[:, 0] + 0.1 * rng.normal(size=300))
    model = TransformedTargetRegressor(
        HistGradientBoostingRegressor(max_iter=50, random_state=0), func=np.log, inverse_func=np.exp
    ).fit(x, y)
    native, exported = model.predict(x), run(model, x).ravel()
    assert np.max(np.abs(exported - native) / native) < 1e-5


def test_other_target_transforms_refuse_to_convert() -> None:
    x = np.ones((20, 1), np.float32)
    model = TransformedTargetRegressor(
        HistGradientBoostingRegressor(max_iter=2), func=np.sqrt, inverse_func=np.square
    ).fit(x, np.arange(20.0))
    with pytest.raises(NotImplementedError, match=r"np\.log"):
        run(model, x)


def test_parity_check_accepts_tiny_and_rejects_real_differences() -> None:
    spec = CATALOG["titanic"]
    native = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert check_parity(native, native + 5e-5, spec) == pytest.approx(5e-5)
    with pytest.raises(StageError, match="1 of 2 test rows"):
        check_parity(native, native + np.array([[0, 0], [0.01, -0.01]]), spec)
    with pytest.raises(StageError):
        check_parity(native, native * np.nan, spec)


def test_regression_parity_is_relative() -> None:
    spec = CATALOG["house_prices"]
    native = np.array([200_000.0, 50_000.0])
    assert check_parity(native, native + np.array([10.0, 4.0]), spec) < 1e-4  # $4 on $50k: 8e-5
    with pytest.raises(StageError, match="relative"):
        check_parity(native, native + 100.0, spec)  # $100 on $50k: 2e-3


def test_ngram_vocabulary_must_cover_its_words() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    from pipelines.flavors.sklearn import check_ngram_vocabulary

    docs = ["the highest quality", "the highest price", "the best", "the best", "the end"]
    check_ngram_vocabulary(TfidfVectorizer(ngram_range=(1, 2), min_df=2).fit(docs))
    # what a max_features cut can leave: a bigram whose second word is not in the vocabulary
    cut = TfidfVectorizer(ngram_range=(1, 2), vocabulary=["the", "the highest"]).fit(docs)
    with pytest.raises(ValueError, match="min_df instead of max_features"):
        check_ngram_vocabulary(cut)


def test_anomaly_graph_scores_and_decides_as_the_detector() -> None:
    """score = -score_samples; label 1 exactly where sklearn's predict says -1."""
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(300, 3)), rng.normal(6, 1, size=(20, 3))]).astype(np.float32)
    detector = IsolationForest(n_estimators=20, contamination=0.06, random_state=0).fit(x)
    graph = to_onnx(
        detector,
        initial_types=[("x", FloatTensorType([None, 3]))],
        target_opset={"": 18, "ai.onnx.ml": 3},
        final_types=[
            ("raw_label", Int64TensorType([None, 1])),
            (RAW_SCORES, FloatTensorType([None, 1])),
        ],
    )
    graph = anomaly_outputs(graph, -detector.offset_)
    onnx.checker.check_model(graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["label", "score"]
    label, scores = session.run(None, {"x": x})
    np.testing.assert_allclose(scores.reshape(-1), -detector.score_samples(x), atol=1e-5)
    assert label.shape == (len(x),)
    assert (label == (detector.predict(x) == -1)).all() and 0 < label.sum() < len(x)
    assert not any("raw_label" in node.output for node in graph.graph.node)  # pruned


@pytest.mark.parametrize("max_features", [1.0, 0.5])
def test_isolation_forest_is_one_tree_ensemble_with_sklearns_scores(max_features: float) -> None:
    """Our converter: every tree in one TreeEnsembleRegressor whose leaves hold sklearn's own
    path lengths (skl2onnx's builds ~27 nodes per tree), the same scores and decisions, also
    where each tree sees a subset of the columns."""
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(size=(400, 5)), rng.normal(5, 1, size=(25, 5))]).astype(np.float32)
    detector = IsolationForest(
        n_estimators=50, max_features=max_features, contamination=0.05, random_state=0
    ).fit(x)
    onnx_ops.register()
    graph = to_onnx(
        detector,
        initial_types=[("x", FloatTensorType([None, 5]))],
        target_opset={"": 18, "ai.onnx.ml": 3},
        final_types=[
            ("raw_label", Int64TensorType([None, 1])),
            (RAW_SCORES, FloatTensorType([None, 1])),
        ],
    )
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("TreeEnsembleRegressor") == 1 and len(ops) < 12, ops
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    label, decision = session.run(None, {"x": x})
    np.testing.assert_allclose(decision.ravel(), detector.decision_function(x), atol=1e-5)
    assert (label.ravel() == detector.predict(x)).all()


def test_silhouette_kmeans_finds_the_blobs_and_numbers_them_by_position() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[8.0, 0.0], [0.0, 0.0], [4.0, 6.0]])
    x = np.vstack([c + rng.normal(0, 0.5, size=(100, 2)) for c in centres])
    model = SilhouetteKMeans(k_min=2, k_max=6, n_init=3, stability_seeds=(1, 2)).fit(x)
    assert model.n_clusters_ == 3 and model.stability_ari_ > 0.99
    assert max(model.silhouette_by_k_, key=model.silhouette_by_k_.get) == 3
    # numbered by the first coordinate of their centres, whatever the seed
    np.testing.assert_allclose(model.cluster_centers_[:, 0], [0, 4, 8], atol=0.3)
    other = SilhouetteKMeans(k_min=3, k_max=3, n_init=3, random_state=7).fit(x)
    assert (model.predict(x) == other.predict(x)).all()
    assert model.transform(x).shape == (300, 3)


def test_relative_parity_is_absolute_below_one() -> None:
    """A detector's box corner at 0.03 px off by 3e-5 px passes (relative, it would be 1e-3);
    a corner at 500 px off by 0.1 px does not."""
    spec = CATALOG["tree_detection"]
    native = np.array([[[0.03, 10.0, 500.0, 600.0, 0.9, 0.0]]])
    assert check_parity(native, native + np.array([[[3e-5, 0, 0, 0, 0, 0]]]), spec) < 1e-4
    with pytest.raises(StageError):
        check_parity(native, native + np.array([[[0, 0, 0.1, 0, 0, 0]]]), spec)


def test_ranked_rows_in_another_order_are_the_same_answer() -> None:
    """Two boxes of one score may come in either order; a different box may not."""
    spec = CATALOG["tree_detection"]
    native = np.array(
        [[[243.7, 117.5, 293.7, 158.3, 0.2327, 0], [201.3, 456.3, 230.7, 486.3, 0.2327, 0]]]
    )
    assert check_parity(native, native[:, ::-1], spec) < 1e-4
    with pytest.raises(StageError):
        check_parity(native, native[:, [0, 0]], spec)
