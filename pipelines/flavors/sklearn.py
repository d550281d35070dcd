"""scikit-learn pipelines: raw fields in, converted whole to ONNX by skl2onnx."""

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pandas as pd
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from contract import paths
from contract.catalog import ModelSpec
from pipelines.flavors import onnx_ops, sparse_text
from pipelines.log import get_logger
from pipelines.metrics import decision_threshold
from pipelines.models import forecasting
from pipelines.models.forecasting import FEATURES, DayAheadForecaster, forecast_onnx
from pipelines.schema import NUMERIC, encode_target, model_frame
from pipelines.segments import profiles

log = get_logger(__name__)
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
MODEL_FILE = "model.joblib"  # pipeline-internal: read only by evaluate/export, never served


def fit(estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> Any:
    X = model_frame(train, spec)
    started = time.perf_counter()
    if not spec.task_kind.SUPERVISED:  # the labels stay out of training altogether
        estimator.fit(X)
    else:
        estimator.fit(X, encode_target(train, spec))
    log.info(
        "fitted %s on %d rows in %.1fs (%s)",
        spec.key,
        len(X),
        time.perf_counter() - started,
        _describe(estimator),
    )
    return estimator


def _describe(estimator: Any) -> str:
    """Trees grown per boosted stage, so a run shows how much model it built."""
    found = [
        f"{type(e).__name__}: {e.n_iter_} trees"
        for e in _walk(estimator)
        if hasattr(e, "n_iter_") and hasattr(e, "_predictors")
    ]
    return ", ".join(found) or type(estimator).__name__


def _walk(estimator: Any) -> list[Any]:
    """Every estimator nested in pipelines, column transformers and calibrated/target wrappers."""
    found = [estimator]
    children: list[Any] = []
    if isinstance(estimator, Pipeline):
        children = [step for _, step in estimator.steps]
    for attr in ("transformers_", "calibrated_classifiers_"):
        for item in getattr(estimator, attr, []):
            children.append(item[1] if isinstance(item, tuple) else item)
    for attr in ("estimator", "regressor_", "trees_"):
        if isinstance(getattr(estimator, attr, None), BaseEstimator):
            children.append(getattr(estimator, attr))
    for child in children:
        found.extend(_walk(child))
    return found


def predict(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """What the task's graph must match (its NATIVE): values [N] or a series [N, horizon],
    anomaly scores (higher: more anomalous; sklearn's score_samples is the opposite),
    distances to each segment's centre (the nearest is its own), or class probabilities."""
    X = model_frame(frame, spec)
    native = spec.task_kind.NATIVE
    if native == "values":
        return np.asarray(model.predict(X), dtype=np.float64)
    if native == "anomaly_scores":
        return -np.asarray(model.score_samples(X), dtype=np.float64)
    if native == "distances":
        return np.asarray(model.transform(X), dtype=np.float64)
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def embed(model: Pipeline, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """A clustering pipeline's space: what its last step clusters (silhouette is measured here)."""
    return np.asarray(model[:-1].transform(model_frame(frame, spec)), dtype=np.float64)


def save(model: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, directory / MODEL_FILE)


def load(directory: Path, spec: ModelSpec) -> Any:
    return joblib.load(directory / MODEL_FILE)


def _tokenexp(vectorizer: CountVectorizer) -> str:
    """sklearn's token pattern for ONNX Runtime's RE2 tokenizer (inline flags dropped:
    patterns use ASCII mode `(?a)`, which is what RE2's \\w means anyway)."""
    return re.sub(r"^\(\?[a-zA-Z]+\)", "", vectorizer.token_pattern)


def check_ngram_vocabulary(vectorizer: CountVectorizer) -> None:
    """ONNX Runtime only finds an n-gram whose words are all unigrams of the vocabulary.

    A vocabulary cut by document frequency alone has that property (a word occurs in at least
    the documents of any n-gram containing it); a cut by `max_features` may not, and the graph
    would then silently miss those n-grams.
    """
    vocabulary = set(vectorizer.vocabulary_)
    uncovered = [g for g in vocabulary if " " in g and not set(g.split(" ")) <= vocabulary]
    if uncovered:
        raise ValueError(
            f"{len(uncovered)} n-grams of {type(vectorizer).__name__} have words outside its "
            f"vocabulary (e.g. {sorted(uncovered)[:3]}), which ONNX cannot match: "
            "limit the vocabulary with min_df instead of max_features"
        )


def _inputs(spec: ModelSpec) -> list[tuple[str, Any]]:
    return [
        (name, FloatTensorType([None, 1]) if f.type in NUMERIC else StringTensorType([None, 1]))
        for name, f in spec.fields.items()
    ]


def to_onnx(model: Any, spec: ModelSpec) -> onnx.ModelProto:
    """The pipeline with the task's outputs: `prediction` (values), `label` + `score` (an
    anomaly detector), `label` + `distances` (a segmentation), `label` + `probabilities`."""
    native = spec.task_kind.NATIVE
    if isinstance(model, DayAheadForecaster):
        return _forecast_onnx(model, spec)
    if native == "distances":
        return _clustering_onnx(model, spec)
    inputs = _inputs(spec)
    options: dict[int, dict[str, Any]] = {}
    for step in _walk(model):
        if isinstance(step, CountVectorizer):  # TfidfVectorizer too
            check_ngram_vocabulary(step)
            options[id(step)] = {"tokenexp": _tokenexp(step), "locale": "C.UTF-8"}
    final_types = None
    if native == "values":
        final_types = [("prediction", FloatTensorType([None, 1]))]
    elif native == "anomaly_scores":
        final_types = [
            ("raw_label", Int64TensorType([None, 1])),
            (RAW_SCORES, FloatTensorType([None, 1])),
        ]
    else:
        options[id(model)] = {"zipmap": False}
    onnx_ops.register()
    graph: onnx.ModelProto = skl_to_onnx(
        model,
        initial_types=inputs,
        target_opset=TARGET_OPSET,
        options=options,
        final_types=final_types,
    )
    graph = sparse_text.sparsify(graph)  # TF-IDF + a logistic output: per token, not dense
    if native == "anomaly_scores":
        threshold = decision_threshold(model)
        assert threshold is not None, "an outlier detector has an offset_ once fitted"
        return anomaly_outputs(graph, threshold)
    return graph


def _clustering_onnx(model: Pipeline, spec: ModelSpec) -> onnx.ModelProto:
    """The features graph (outputs `embedding`, the clustered space) joined to the K-Means
    graph (`label`, the nearest centre, and `distances` to every centre)."""
    onnx_ops.register()
    final = model.steps[-1][1]
    kmeans = getattr(final, "kmeans_", final)  # SilhouetteKMeans wraps the chosen KMeans
    width = int(kmeans.cluster_centers_.shape[1])
    space = skl_to_onnx(
        model[:-1],
        initial_types=_inputs(spec),
        target_opset=TARGET_OPSET,
        final_types=[("embedding", FloatTensorType([None, width]))],
    )
    centres = skl_to_onnx(
        kmeans,
        initial_types=[("embedding", FloatTensorType([None, width]))],
        target_opset=TARGET_OPSET,
        final_types=[
            ("label", Int64TensorType([None])),
            ("distances", FloatTensorType([None, kmeans.n_clusters])),
        ],
    )
    centres = onnx.compose.add_prefix(centres, "kmeans_", rename_inputs=True, rename_outputs=False)
    for graph in (space, centres):  # one version per domain (skl2onnx keeps the lowest it needs)
        del graph.opset_import[:]
        graph.opset_import.extend(
            onnx.helper.make_opsetid(domain, version) for domain, version in TARGET_OPSET.items()
        )
    return onnx.compose.merge_models(
        space,
        centres,
        io_map=[("embedding", "kmeans_embedding")],
        outputs=["label", "distances", "embedding"],
    )


def _forecast_onnx(model: DayAheadForecaster, spec: ModelSpec) -> onnx.ModelProto:
    """The record tensors (series [N, length], numbers [N, 1]) through the feature builder
    and the trees to `forecast` [N, horizon]."""
    trees = skl_to_onnx(
        model.trees_,
        initial_types=[("tree_features", FloatTensorType([None, len(FEATURES)]))],
        target_opset=TARGET_OPSET,
        final_types=[("variable", FloatTensorType([None, 1]))],
    )
    inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, [None, (f.shape or [1])[0] if f.type == "series" else 1]
        )
        for name, f in spec.fields.items()
    ]
    return forecast_onnx(model, trees, inputs)


RAW_SCORES = "raw_scores"  # sklearn's decision_function: score_samples - offset_


def anomaly_outputs(graph: onnx.ModelProto, threshold: float) -> onnx.ModelProto:
    """An outlier detector's graph with the contract's outputs: `score` [N, 1], the anomaly
    score (-score_samples, higher: more anomalous), and `label` [N], 1 above `threshold`
    (sklearn's decision: decision_function < 0, i.e. -score_samples > -offset_)."""
    h, body = onnx.helper, graph.graph
    for node in body.node:  # the converter's own tensors may carry the contract's names
        for names in (node.input, node.output):
            names[:] = [f"detector_{n}" if n in ("label", "score") else n for n in names]
    body.initializer.append(
        onnx.numpy_helper.from_array(np.array([threshold], np.float32), "anomaly_threshold")
    )
    body.node.extend(
        [
            h.make_node("Neg", [RAW_SCORES], ["neg_decision"]),
            # -(score_samples - offset_) - offset_ = -score_samples, offset_ = -threshold
            h.make_node("Add", ["neg_decision", "anomaly_threshold"], ["score"]),
            h.make_node("Greater", ["score", "anomaly_threshold"], ["is_anomaly"]),
            h.make_node("Cast", ["is_anomaly"], ["anomaly_label"], to=onnx.TensorProto.INT64),
            h.make_node("Reshape", ["anomaly_label", "flat_shape"], ["label"]),
        ]
    )
    body.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat_shape"))
    del body.output[:]
    body.output.extend(
        [
            h.make_tensor_value_info("label", onnx.TensorProto.INT64, [None]),
            h.make_tensor_value_info("score", onnx.TensorProto.FLOAT, [None, 1]),
        ]
    )
    return _prune(graph)


def _prune(graph: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the nodes and constants no output depends on (the detector's own -1/1 label)."""
    body = graph.graph
    needed = {o.name for o in body.output}
    kept = []
    for node in reversed(body.node):
        if set(node.output) & needed:
            kept.append(node)
            needed |= set(node.input)
    del body.node[:]
    body.node.extend(reversed(kept))
    unused = [i for i in body.initializer if i.name not in needed]
    for initializer in unused:
        body.initializer.remove(initializer)
    return graph


def explain(model: Any, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    """Top weights of a linear text model; otherwise permutation importance of each raw field."""
    if isinstance(model, DayAheadForecaster):  # what the trees read: lags, calendar, weather
        return _forecast_importance(model, test, spec)
    scoring: Any = spec.task_kind.IMPORTANCE_SCORING
    if not scoring:  # a segmentation: no target to shuffle against; profiles explain it
        return None
    text_fields = [n for n, f in spec.fields.items() if f.type == "text"]
    if text_fields == list(spec.fields):
        return _linear_text_weights(model)
    if spec.task_kind.NATIVE == "anomaly_scores":  # how well the scores rank the labels
        scoring = _anomaly_roc_auc
    result = permutation_importance(
        model,
        model_frame(test, spec),
        encode_target(test, spec),
        scoring=scoring,
        n_repeats=5,
        random_state=0,
        n_jobs=1,
    )
    table = pd.DataFrame({"feature": list(spec.fields), "importance": result.importances_mean})
    table = table.sort_values("importance", ascending=False, ignore_index=True)
    name = "roc_auc" if callable(scoring) else scoring.removeprefix("neg_")
    table.attrs["measure"] = f"drop in {name} when the field is shuffled"
    return table


def _forecast_importance(
    model: DayAheadForecaster, test: pd.DataFrame, spec: ModelSpec
) -> pd.DataFrame:
    X = model.long_features(model_frame(test, spec)).astype(np.float32)
    result = permutation_importance(
        model.trees_,
        X,
        encode_target(test, spec).reshape(-1),
        scoring="neg_mean_absolute_percentage_error",
        n_repeats=3,
        random_state=0,
        n_jobs=1,
    )
    table = pd.DataFrame({"feature": FEATURES, "importance": result.importances_mean})
    table = table.sort_values("importance", ascending=False, ignore_index=True)
    table.attrs["measure"] = "rise in MAPE when the built feature is shuffled"
    return table


def _anomaly_roc_auc(model: Any, X: pd.DataFrame, y: np.ndarray) -> float:
    return float(roc_auc_score(y, -model.score_samples(X)))


def _linear_text_weights(model: Pipeline, top: int = 15) -> pd.DataFrame:
    vectorizer = next(e for e in _walk(model) if isinstance(e, CountVectorizer))
    linear = model.steps[-1][1]
    weights = pd.DataFrame(
        {"feature": vectorizer.get_feature_names_out(), "importance": linear.coef_.ravel()}
    )
    order = weights["importance"].abs().sort_values(ascending=False).index[: 2 * top]
    table = weights.loc[order].reset_index(drop=True)
    table.attrs["measure"] = "logistic-regression weight of the TF-IDF term (+ towards positive)"
    return table


def report(
    model: Any, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, metrics) of evaluate beyond the task's scores: a segmentation's space (where
    it is judged) and its search over k; a forecaster's seasonal-naive baseline and
    walk-forward refits."""
    if isinstance(model, DayAheadForecaster):
        from pipelines.models import get_project  # the catalog module builds the refits

        project = get_project(spec.key)

        def refit(known: pd.DataFrame, target: pd.DataFrame) -> np.ndarray:
            with tempfile.TemporaryDirectory() as tmp:
                fitted = project.FLAVOR.fit(project.build(spec), known, spec, Path(tmp))
            return np.asarray(project.FLAVOR.predict(fitted, target, spec))

        train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
        return forecasting.report(spec, model, refit, train, test, predicted)
    if spec.task_kind.NATIVE == "distances":
        return {"embedding": embed(model, test, spec), "clusters": model.steps[-1][1]}, {}
    return {}, {}


def metadata(model: Any, spec: ModelSpec, root: Path) -> dict[str, str]:
    """What the graph's metadata carries for the service beyond the common contract: a
    segmentation's profile of each segment, in label order, on the training split in the
    fields' own units (the service answers each record with its segment's)."""
    if spec.task_kind.NATIVE != "distances":
        return {}
    train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    found = profiles(spec, train, spec.task_kind.labels(predict(model, train, spec), None))
    log.info("%s: %d segments, profiled on the training split", spec.key, len(found))
    return {"segments": json.dumps(found)}
