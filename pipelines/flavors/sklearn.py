"""scikit-learn pipelines: raw fields in, converted whole to ONNX by skl2onnx."""

import re
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pandas as pd
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from pipelines.catalog import ModelSpec
from pipelines.flavors import onnx_ops
from pipelines.log import get_logger
from pipelines.schema import NUMERIC, encode_target, model_frame

log = get_logger(__name__)
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
MODEL_FILE = "model.joblib"  # pipeline-internal: read only by evaluate/export, never served


def fit(estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> Any:
    X, y = model_frame(train, spec), encode_target(train, spec)
    started = time.perf_counter()
    estimator.fit(X, y)
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
    for attr in ("estimator", "regressor_"):
        if isinstance(getattr(estimator, attr, None), BaseEstimator):
            children.append(getattr(estimator, attr))
    for child in children:
        found.extend(_walk(child))
    return found


def predict(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    X = model_frame(frame, spec)
    if spec.task == "regression":
        return np.asarray(model.predict(X), dtype=np.float64)
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
    inputs = [
        (name, FloatTensorType([None, 1]) if f.type in NUMERIC else StringTensorType([None, 1]))
        for name, f in spec.fields.items()
    ]
    options: dict[int, dict[str, Any]] = {}
    for step in _walk(model):
        if isinstance(step, CountVectorizer):  # TfidfVectorizer too
            check_ngram_vocabulary(step)
            options[id(step)] = {"tokenexp": _tokenexp(step), "locale": "C.UTF-8"}
    final_types = None
    if spec.task == "regression":
        final_types = [("prediction", FloatTensorType([None, 1]))]
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
    return graph


def explain(model: Any, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    """Top weights of a linear text model; otherwise permutation importance of each raw field."""
    text_fields = [n for n, f in spec.fields.items() if f.type == "text"]
    if text_fields == list(spec.fields):
        return _linear_text_weights(model)
    scoring = (
        "neg_root_mean_squared_error"
        if spec.task == "regression"
        else ("roc_auc" if spec.task == "binary" else "accuracy")
    )
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
    table.attrs["measure"] = f"drop in {scoring.removeprefix('neg_')} when the field is shuffled"
    return table


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
