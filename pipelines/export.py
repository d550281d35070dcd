"""Stage export@<key>: the whole inference pipeline as one ONNX graph, checked against native.

The stage fails, writing nothing, unless ONNX Runtime reproduces the native model on every
row of the test split: probabilities within 1e-4 absolute, regression values within 1e-4
relative (a price of 200,000 within 20), and the same label (the model's own decision,
with its tuned threshold if it has one).
"""

import json
import shutil
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from pipelines import paths
from pipelines.catalog import ModelSpec
from pipelines.cli import StageError, run_stage
from pipelines.flavors import factors, judged_test_split, retrieval
from pipelines.log import get_logger
from pipelines.metrics import decision_threshold, labels_of
from pipelines.models import get_project
from pipelines.models.factorization import Factors
from pipelines.schema import onnx_feeds
from pipelines.segments import profiles
from pipelines.triton import repository_dir, write_repository

log = get_logger(__name__)
TOLERANCE = 1e-4


# the output the native model's predict() matches; classifiers': "probabilities"
OUTPUT = {
    "regression": "prediction",
    "forecast": "forecast",
    "anomaly": "score",
    "clustering": "distances",
    "retrieval": "embedding",  # the encoder's; the search after it is FAISS, exactly as served
}
VECTORS = ("prediction", "score")  # [N, 1] in the graph, [N] natively


Session: TypeAlias = ort.InferenceSession | retrieval.RetrievalSession


def open_session(graph: onnx.ModelProto, spec: ModelSpec, directory: Path) -> Session:
    """The graph as it is served: a search encoder with its tokenizer before it and the
    index and documents in `directory` after it; any other graph alone."""
    if spec.task == "retrieval":
        return retrieval.session(graph, directory)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session


def onnx_predict(session: Session, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Probabilities [N, C], values [N], anomaly scores [N], distances to the segments'
    centres [N, k], a recommender's predicted ratings of the frame's (user, item) pairs [N]
    or a search's query embeddings [N, dim] from the exported graph."""
    if spec.task == "recommendation":
        assert spec.target.item
        names = list(factors.EVALUATION)
        outputs = dict(zip(names, session.run(names, onnx_feeds(frame, spec)), strict=True))
        return factors.onnx_ratings(outputs, frame[spec.target.item].to_numpy(np.int64))
    output = OUTPUT.get(spec.task, "probabilities")
    (result,) = session.run([output], onnx_feeds(frame, spec))
    values = np.asarray(result, dtype=np.float64)
    return values.reshape(len(frame)) if output in VECTORS else values


def onnx_embedding(
    session: ort.InferenceSession, frame: pd.DataFrame, spec: ModelSpec
) -> np.ndarray:
    """The space a segmentation's graph clusters (its `embedding` output)."""
    (result,) = session.run(["embedding"], onnx_feeds(frame, spec))
    return np.asarray(result, dtype=np.float64)


def check_parity(native: np.ndarray, exported: np.ndarray, spec: ModelSpec) -> float:
    """Largest disagreement; raises StageError past the tolerance."""
    relative = spec.task in ("regression", "forecast")
    if relative:
        gap = np.abs(exported - native) / np.maximum(np.abs(native), 1e-12)
    else:
        gap = np.abs(exported - native)
    worst = float(gap.max())
    if not worst <= TOLERANCE:  # also catches NaN
        rows = int((gap.reshape(len(native), -1) > TOLERANCE).any(axis=1).sum())
        raise StageError(
            f"ONNX Runtime disagrees with the native model on {rows} of {len(native)} "
            f"test rows (max {'relative ' if relative else ''}"
            f"difference {worst:.3g} > {TOLERANCE})"
        )
    return worst


def check_labels(
    session: ort.InferenceSession,
    frame: pd.DataFrame,
    spec: ModelSpec,
    native: np.ndarray,
    threshold: float | None,
) -> None:
    """The graph's label must be the model's decision (its tuned threshold, if any)."""
    (labels,) = session.run(["label"], onnx_feeds(frame, spec))
    expected = labels_of(spec, native, threshold)
    # a row within the tolerance of the decision boundary may round either way in float32
    if spec.task == "clustering":  # equidistant from its two nearest centres
        near = np.sort(native, axis=1)
        margin = near[:, 1] - near[:, 0] > TOLERANCE
    elif threshold is not None:
        positive = native if native.ndim == 1 else native[:, 1]  # anomaly scores: [N]
        margin = np.abs(positive - threshold) > TOLERANCE
    else:
        top = np.sort(native, axis=1)
        margin = top[:, -1] - top[:, -2] > TOLERANCE
    wrong = int(((np.asarray(labels).reshape(-1) != expected) & margin).sum())
    if wrong:
        raise StageError(
            f"the ONNX graph's label differs from the model's decision on {wrong} of "
            f"{len(frame)} test rows (threshold {threshold})"
        )


def check_lists(
    session: ort.InferenceSession, frame: pd.DataFrame, spec: ModelSpec, model: Factors
) -> None:
    """The graph's top-k lists must be the model's: for every test user and one it never saw,
    the same fallback decision and items ranked as high (ties may come in either order)."""
    user = factors.user_column(spec)
    users = np.append(np.unique(frame[user].to_numpy(np.int64)), model.users.max() + 1)
    feeds = {user: users.astype(np.float32).reshape(-1, 1)}
    items, fallback = session.run(["items", "fallback"], feeds)
    ranking, cold = factors.ranking_values(model, users)
    _, values = factors.top_of(ranking, model.top_k)
    if not np.array_equal(fallback, cold):
        raise StageError("the ONNX graph's popularity fallback differs from the model's")
    ranked = np.take_along_axis(ranking, np.searchsorted(model.items, items), axis=1)
    gap = np.abs(np.sort(ranked, axis=1)[:, ::-1] - values)  # an item rated before: inf
    if not gap.max() <= TOLERANCE:
        rows = int((gap > TOLERANCE).any(axis=1).sum())
        raise StageError(f"the ONNX graph's top-{model.top_k} lists differ for {rows} users")


def describe(
    graph: onnx.ModelProto,
    spec: ModelSpec,
    threshold: float | None = None,
    segments: list[dict[str, Any]] | None = None,
) -> onnx.ModelProto:
    """Metadata a server needs to answer on the common contract, inside the artifact itself
    (`threshold`: the decision threshold the graph's label applies, if it has one;
    `segments`: a segmentation's profile of each segment, in label order). Metadata the
    flavor wrote (a search encoder's tokenizer) is kept."""
    meta = {p.key: p.value for p in graph.metadata_props} | {
        "model": spec.key,
        "task": spec.task,
        "classes": json.dumps(spec.class_names),
        "fields": json.dumps(
            {n: f.model_dump(exclude_defaults=True) for n, f in spec.fields.items()}
        ),
        "target": spec.target.column,
    }
    if threshold is not None:
        meta["threshold"] = repr(threshold)
    if segments is not None:
        meta["segments"] = json.dumps(segments)
    onnx.helper.set_model_props(graph, meta)
    graph.doc_string = spec.description
    onnx.checker.check_model(graph)
    return graph


def main_work(spec: ModelSpec, root: Path) -> None:
    flavor = get_project(spec.key).FLAVOR
    model = flavor.load(paths.model_dir(spec.key, root), spec)
    test = judged_test_split(flavor, model, paths.split_dir(spec.key, root))
    segments = None
    if spec.task == "clustering":  # profiled on the training split, in the fields' units
        train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
        segments = profiles(spec, train, labels_of(spec, flavor.predict(model, train, spec), None))
    graph = describe(flavor.to_onnx(model, spec), spec, decision_threshold(model), segments)
    served: list[Path] = getattr(flavor, "serving_files", lambda _: [])(model)  # beside it
    session = open_session(graph, spec, paths.model_dir(spec.key, root))
    native = flavor.predict(model, test, spec)
    worst = check_parity(native, onnx_predict(session, test, spec), spec)
    if spec.task == "recommendation":
        check_lists(session, test, spec, model)
    elif spec.labels_served:
        check_labels(session, test, spec, native, decision_threshold(model))
    if segments is not None:
        log.info("%s: %d segments, profiled on the training split", spec.key, len(segments))
    target = paths.onnx_model(spec.key, root)
    shutil.rmtree(target.parent, ignore_errors=True)
    target.parent.mkdir(parents=True)
    onnx.save_model(graph, target)
    for path in served:  # registered with the graph, each with its checksum
        shutil.copyfile(path, target.parent / path.name)
    log.info(
        "%s: %s (%d KiB), parity on %d test rows, max difference %.2g",
        spec.key,
        target.name,
        target.stat().st_size // 1024,
        len(test),
        worst,
    )
    if spec.triton is not None:
        repository = write_repository(spec, target, repository_dir(spec.key, root))
        log.info("%s: Triton model repository %s", spec.key, repository.relative_to(root))


def main(argv: list[str] | None = None) -> None:
    run_stage("export", main_work, argv)


if __name__ == "__main__":
    main()
