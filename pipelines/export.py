"""Stage export@<key>: the whole inference pipeline as one ONNX graph, checked against native.

The stage fails, writing nothing, unless ONNX Runtime reproduces the native model on every
row of the test split: probabilities within 1e-4 absolute, regression values and boxes
within 1e-4 relative (a price of 200,000 within 20; absolute below 1: a box's corner at
0.03 px within 1e-4 px), the same label (the model's own decision,
with its tuned threshold if it has one), and the same texts (a recogniser's transcripts).
"""

import json
import shutil
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from contract import paths, reference
from contract.catalog import EMBEDDING_DIMS, INPUT_EMBEDDING, ModelSpec, embedded
from contract.feeds import one_at_a_time, onnx_feeds
from contract.tasks.common import ServedGraph
from pipelines import quantize
from pipelines.cli import StageError, run_stage
from pipelines.flavors import judged_test_split
from pipelines.log import get_logger
from pipelines.metrics import decision_threshold, labels_of, score
from pipelines.models import get_project
from pipelines.schema import encode_target
from pipelines.triton import repository_dir, write_repository

log = get_logger(__name__)
TOLERANCE = 1e-4
# served texts against the native model's: the word error rate of one against the other
TEXT_TOLERANCE = 0.02
CHUNK_ROWS = 256  # images a scoring run takes at once (bounds the activations' memory)
# test rows the embedding's parity is checked on: the graph's other outputs are checked on
# every row, and a second pass of a U-Net over 2,000 canvases costs tens of seconds
EMBEDDING_CHECK_ROWS = 256


# ONNX Runtime's session, or what a task serves on one (a search's RetrievalSession)
Session: TypeAlias = Any


def open_session(graph: onnx.ModelProto, spec: ModelSpec, directory: Path) -> Session:
    """The graph as it is served (the task's `serve`): a search encoder with its tokenizer
    before it and the index and documents in `directory` after it; any other graph alone."""
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return spec.task_kind.serve(session, directory)


def onnx_predict(session: Session, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The native prediction from the exported graph (the task's `native`): probabilities
    [N, C], values [N], anomaly scores [N], distances to the segments' centres [N, k], a
    recommender's predicted ratings of the frame's (user, item) pairs [N] or a search's
    query embeddings [N, dim]."""
    outputs = run_rows(session, list(spec.task_kind.JUDGED_OUTPUTS), frame, spec)
    return spec.task_kind.native(outputs, frame, spec)


def run_rows(
    session: Session, names: list[str], frame: pd.DataFrame, spec: ModelSpec
) -> dict[str, np.ndarray]:
    """The graph's outputs `names` for the frame's rows: in one run, or a row at a time
    where the records are served so (photos: contract.feeds.one_at_a_time)."""
    # a photo padded to no other; images in chunks (a segmentation's 2,000 canvases at once
    # held 14 GB of activations); other rows at once (a recommender's outputs span the batch)
    images = any(f.type == "image" for f in spec.fields.values())
    step = 1 if one_at_a_time(spec) else CHUNK_ROWS if images else max(len(frame), 1)
    runs = [
        session.run(names, onnx_feeds(frame.iloc[start : start + step], spec))
        for start in range(0, len(frame), step)
    ]
    return {n: np.concatenate([run[i] for run in runs]) for i, n in enumerate(names)}


def onnx_embedding(
    session: ort.InferenceSession, frame: pd.DataFrame, spec: ModelSpec
) -> np.ndarray:
    """The space a segmentation's graph clusters (its `embedding` output)."""
    (result,) = session.run(["embedding"], onnx_feeds(frame, spec))
    return np.asarray(result, dtype=np.float64)


def check_parity(
    native: np.ndarray, exported: np.ndarray, spec: ModelSpec, relative: bool | None = None
) -> float:
    """Largest disagreement; raises StageError past the tolerance. Rows of ranked outputs
    ([N, M, K]: a detector's boxes) are compared in one order, each item's sorted by its
    values: two boxes of equal score (to float32's noise) may come in either order.
    `relative`: the task's RELATIVE_PARITY unless given. Texts (object arrays: a
    recogniser's transcripts) are scored against each other (`check_texts`)."""
    if native.dtype == object or exported.dtype == object:
        return check_texts(native, exported, spec)
    if native.ndim == 3:
        native, exported = in_order(native), in_order(exported)
    relative = spec.task_kind.RELATIVE_PARITY if relative is None else relative
    if relative:  # relative above 1, absolute below (a box's corner at 0.03 px, a score)
        gap = np.abs(exported - native) / np.maximum(np.abs(native), 1.0)
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


def check_texts(native: np.ndarray, exported: np.ndarray, spec: ModelSpec) -> float:
    """The served texts scored against the native model's as the task scores its answers
    (its gate metric, a word error rate after its normalisation: "5, 5" is "5 5"): 0.0 where
    every text is the native one, StageError past TEXT_TOLERANCE. Not exact: the served front
    end is within 5e-6 of the native one, which can still tip a close call of an int8 decoder
    (a comma, an uncertain word: pipelines/flavors/speech.py); a wrong front end or wrong
    decoding settings change most words."""
    pairs = list(zip(native.reshape(-1), exported.reshape(-1), strict=True))
    differ = [(n, e) for n, e in pairs if n != e]
    if not differ:
        return 0.0
    rate = float(
        spec.task_kind.score(spec, native.reshape(-1), exported.reshape(-1))[spec.gate_metric]
    )
    first = differ[0]
    said = (
        f"the served texts (transcripts) differ from the native model's on {len(differ)} of "
        f"{native.size} test rows (first: {first[1]!r}, native {first[0]!r}): "
        f"{spec.gate_metric} {rate:.4f} of one against the other"
    )
    if not rate <= TEXT_TOLERANCE:  # also catches NaN
        raise StageError(f"{said} > {TEXT_TOLERANCE}")
    log.info("%s: %s (<= %s)", spec.key, said, TEXT_TOLERANCE)
    return rate


def in_order(rows: np.ndarray) -> np.ndarray:
    """Each item's rows [M, K] sorted by their values rounded to 1e-3, column by column."""
    keys = np.round(rows, 3)
    return np.stack([item[np.lexsort(key.T[::-1])] for item, key in zip(rows, keys, strict=True)])


def check_embedding(
    flavor: Any, model: Any, session: Session, frame: pd.DataFrame, spec: ModelSpec
) -> None:
    """An image or transformer model's graph outputs each picture's or text's
    INPUT_EMBEDDING [N, EMBEDDING_DIMS] (the drift view reads it from the log), equal to the
    native model's (relative parity: coordinates may exceed 1)."""
    if not any(map(embedded, spec.fields.values())):
        return
    names = [o.name for o in session.get_outputs()]
    if INPUT_EMBEDDING not in names:
        raise StageError(
            f"an embedding model's graph must output {INPUT_EMBEDDING}: it has {names}"
        )
    (exported,) = run_rows(session, [INPUT_EMBEDDING], frame, spec).values()
    native = flavor.outputs(model, frame, spec)[INPUT_EMBEDDING]
    if exported.shape != (len(frame), EMBEDDING_DIMS):
        raise StageError(f"{INPUT_EMBEDDING} is {list(exported.shape)}, not [N, {EMBEDDING_DIMS}]")
    check_parity(np.asarray(native, np.float64), np.asarray(exported, np.float64), spec, True)


def check_labels(
    session: ort.InferenceSession,
    frame: pd.DataFrame,
    spec: ModelSpec,
    native: np.ndarray,
    threshold: float | None,
) -> None:
    """The graph's label must be the model's decision (its tuned threshold, if any)."""
    (labels,) = run_rows(session, ["label"], frame, spec).values()  # in chunks, as scored
    expected = labels_of(spec, native, threshold).reshape(-1)  # a segmentation's: per pixel
    # a row within the tolerance of the decision boundary may round either way in float32
    margin = spec.task_kind.decisive(native, threshold, TOLERANCE).reshape(-1)
    wrong = int(((np.asarray(labels).reshape(-1) != expected) & margin).sum())
    if wrong:
        raise StageError(
            f"the ONNX graph's label differs from the model's decision on {wrong} of "
            f"{expected.size} test labels (threshold {threshold})"
        )


def describe(
    graph: onnx.ModelProto,
    spec: ModelSpec,
    threshold: float | None = None,
    extra: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Metadata a server needs to answer on the common contract, inside the artifact itself
    (`threshold`: the decision threshold the graph's label applies, if it has one;
    `extra`: what the flavor's `metadata` adds, e.g. a segmentation's profile of each
    segment, in label order). Metadata the flavor wrote (a search encoder's tokenizer) is
    kept."""
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
    meta |= extra or {}
    onnx.helper.set_model_props(graph, meta)
    graph.doc_string = spec.description
    onnx.checker.check_model(graph)
    return graph


def main_work(spec: ModelSpec, root: Path) -> None:
    flavor = get_project(spec.key).FLAVOR
    model = flavor.load(paths.model_dir(spec.key, root), spec)
    test = judged_test_split(flavor, model, paths.split_dir(spec.key, root))
    # what the flavor adds to the graph's metadata: a segmentation's profiles
    extra: dict[str, str] = getattr(flavor, "metadata", lambda *_: {})(model, spec, root)
    graph = describe(flavor.to_onnx(model, spec), spec, decision_threshold(model), extra)
    served: list[Path] = getattr(flavor, "serving_files", lambda _: [])(model)  # beside it
    session = open_session(graph, spec, paths.model_dir(spec.key, root))
    native, exported = flavor.predict(model, test, spec), onnx_predict(session, test, spec)
    worst = check_parity(native, exported, spec)
    check_embedding(flavor, model, session, test.head(EMBEDDING_CHECK_ROWS), spec)
    check_served = getattr(flavor, "check_served", None)  # a recommender's top-k lists
    if callable(check_served):
        check_served(session, test, spec, model, TOLERANCE)
    elif spec.labels_served:
        check_labels(session, test, spec, native, decision_threshold(model))
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
    if spec.int8 is not None:
        ship_int8(graph, session, exported, test, spec, root)
    write_reference(spec, root)


def write_reference(spec: ModelSpec, root: Path) -> Path:
    """The drift service's reference (contract/reference.py): a seeded sample of the split
    that stands for the traffic, in the drift view, with the served graph's answers on it.

    Made here, where DVC's run cache keeps it, and only logged by register, which runs
    again in every new workspace (a container's, a retraining's): through the transformer
    or the U-Net, 4,000-5,000 rows are most of a registration."""
    kind = spec.task_kind
    split = pd.read_parquet(paths.split_dir(spec.key, root) / f"{kind.REFERENCE_SPLIT}.parquet")
    rows = reference.sample(split)
    graph = onnx.load_model(paths.served_model(spec.key, root))
    session = open_session(graph, spec, paths.onnx_model(spec.key, root).parent)
    # what the service serves (a recommender's rating of every item is for scoring only)
    names = [o.name for o in session.get_outputs() if o.name not in kind.PIPELINE_OUTPUTS]
    result = run_rows(session, names, rows, spec)
    # answered as the service answers: at the threshold the graph's metadata holds
    served = ServedGraph(spec, dict(session.get_modelmeta().custom_metadata_map))
    target = paths.reference_file(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    reference.reference(spec, rows, result, served).to_parquet(target, index=False)
    log.info("%s: drift reference of %d %s rows", spec.key, len(rows), kind.REFERENCE_SPLIT)
    return target


def scored(
    session: Session, frame: pd.DataFrame, spec: ModelSpec, predicted: np.ndarray | None = None
) -> dict[str, float]:
    """The task's metrics of a graph on labelled rows, decided at the graph's own threshold
    (`predicted`: its predictions of them, where already made)."""
    # a segmentation is judged in the space it clusters, which its graph outputs too
    clusters = spec.task_kind.NATIVE == "distances"
    embedding = onnx_embedding(session, frame, spec) if clusters else None
    predicted = onnx_predict(session, frame, spec) if predicted is None else predicted
    threshold = session.get_modelmeta().custom_metadata_map.get("threshold")
    threshold_value = None if threshold is None else float(threshold)
    return score(spec, encode_target(frame, spec), predicted, threshold_value, embedding)


def ship_int8(
    graph: onnx.ModelProto,
    session: Session,
    exported: np.ndarray,
    test: pd.DataFrame,
    spec: ModelSpec,
    root: Path,
) -> None:
    """artifacts/<key>/int8/: the INT8 graph where its gate metric on the judged test rows
    stays within `int8.max_drop` of the FP32 graph's (`session`: that graph as served,
    `exported`: its predictions on them),
    and the report of both either way, with every metric of the INT8 graph (what the
    register stage logs and gates on where it is the graph served: contract/paths.py
    `served_model`)."""
    train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    int8 = quantize.quantized(graph, spec, train)
    fp32_metrics = scored(session, test, spec, exported)
    int8_metrics = scored(open_session(int8, spec, paths.model_dir(spec.key, root)), test, spec)
    sizes = (graph.ByteSize(), int8.ByteSize())
    scores = (fp32_metrics[spec.gate_metric], int8_metrics[spec.gate_metric])
    report = quantize.judge(spec, scores[0], scores[1], sizes, int8_metrics)
    target = paths.int8_model(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    if report["shipped"]:
        onnx.save_model(int8, target)
    (target.parent / quantize.REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "%s: INT8 %s %.4f vs FP32 %.4f, %d KiB vs %d KiB: %s",
        spec.key,
        spec.gate_metric,
        scores[1],
        scores[0],
        sizes[1] // 1024,
        sizes[0] // 1024,
        "shipped, served" if report["shipped"] else f"not shipped ({report['why']})",
    )


def main(argv: list[str] | None = None) -> None:
    run_stage("export", main_work, argv)


if __name__ == "__main__":
    main()
