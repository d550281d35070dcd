"""scikit-learn pipelines: raw fields in, converted whole to ONNX by skl2onnx."""

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
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
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
from pipelines.schema import encode_target, model_frame

log = get_logger(__name__)
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


def to_onnx(model: Any, spec: ModelSpec) -> onnx.ModelProto:
    """The pipeline with the task's outputs: `prediction` (values), `label` + `score` (an
    anomaly detector), `label` + `distances` (a segmentation), `label` + `probabilities`."""
    native = spec.task_kind.NATIVE
    export = getattr(final_step(model), "export_onnx", None)
    if callable(export):  # an estimator that converts itself (a forecaster, a segmentation)
        converted: onnx.ModelProto = export(model, spec)
        return converted
    inputs = onnx_ops.field_types(spec)
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
        target_opset=onnx_ops.TARGET_OPSET,
        options=options,
        final_types=final_types,
    )
    graph = sparse_text.sparsify(graph)  # TF-IDF + a logistic output: per token, not dense
    if native == "anomaly_scores":
        threshold = decision_threshold(model)
        assert threshold is not None, "an outlier detector has an offset_ once fitted"
        return anomaly_outputs(graph, threshold)
    return graph


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
    importance = getattr(final_step(model), "importance", None)
    if callable(importance):  # what a forecaster's trees read: lags, calendar, weather
        table: pd.DataFrame = importance(model, test, spec)
        return table
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


def final_step(model: Any) -> Any:
    """The estimator a pipeline ends in (the model itself when it is no pipeline)."""
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _train_split(spec: ModelSpec, root: Path) -> pd.DataFrame:
    return pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")


def report(
    model: Any, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, metrics) of evaluate beyond the task's scores, from the estimator's own
    `report` (a segmentation's space and its search over k; a forecaster's seasonal-naive
    baseline and walk-forward refits, for which it gets `refit`)."""
    found = getattr(final_step(model), "report", None)
    if not callable(found):
        return {}, {}
    from pipelines.models import get_project  # the catalog module builds the refits

    def refit(known: pd.DataFrame, target: pd.DataFrame) -> np.ndarray:
        project = get_project(spec.key)
        with tempfile.TemporaryDirectory() as tmp:
            fitted = fit(project.build(spec), known, spec, Path(tmp))
        return predict(fitted, target, spec)

    views, metrics = found(model, spec, _train_split(spec, root), test, predicted, refit)
    return views, metrics


def metadata(model: Any, spec: ModelSpec, root: Path) -> dict[str, str]:
    """What the graph's metadata carries for the service beyond the common contract, from
    the estimator's own `metadata` (a segmentation's profile of each segment)."""
    found = getattr(final_step(model), "metadata", None)
    if not callable(found):
        return {}
    extra: dict[str, str] = found(model, spec, _train_split(spec, root))
    return extra
