"""Stage export@<key>: the whole inference pipeline as one ONNX graph, checked against native.

The stage fails, writing nothing, unless ONNX Runtime reproduces the native model on every
row of the test split: probabilities within 1e-4 absolute, regression values within 1e-4
relative (a price of 200,000 within 20), and the same label (the model's own decision,
with its tuned threshold if it has one).
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from pipelines import paths
from pipelines.catalog import ModelSpec
from pipelines.cli import StageError, run_stage
from pipelines.log import get_logger
from pipelines.metrics import decided, decision_threshold
from pipelines.models import get_project
from pipelines.schema import onnx_feeds
from pipelines.triton import repository_dir, write_repository

log = get_logger(__name__)
TOLERANCE = 1e-4


def onnx_predict(session: ort.InferenceSession, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Probabilities [N, C] or values [N] from the exported graph."""
    output = "prediction" if spec.task == "regression" else "probabilities"
    (result,) = session.run([output], onnx_feeds(frame, spec))
    values = np.asarray(result, dtype=np.float64)
    return values.reshape(len(frame)) if spec.task == "regression" else values


def check_parity(native: np.ndarray, exported: np.ndarray, spec: ModelSpec) -> float:
    """Largest disagreement; raises StageError past the tolerance."""
    if spec.task == "regression":
        gap = np.abs(exported - native) / np.maximum(np.abs(native), 1e-12)
    else:
        gap = np.abs(exported - native)
    worst = float(gap.max())
    if not worst <= TOLERANCE:  # also catches NaN
        rows = int((gap.reshape(len(native), -1) > TOLERANCE).any(axis=1).sum())
        raise StageError(
            f"ONNX Runtime disagrees with the native model on {rows} of {len(native)} "
            f"test rows (max {'relative ' if spec.task == 'regression' else ''}"
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
    expected = decided(native, threshold)
    # a row within the tolerance of the decision boundary may round either way in float32
    if threshold is not None:
        margin = np.abs(native[:, 1] - threshold) > TOLERANCE
    else:
        top = np.sort(native, axis=1)
        margin = top[:, -1] - top[:, -2] > TOLERANCE
    wrong = int(((np.asarray(labels).reshape(-1) != expected) & margin).sum())
    if wrong:
        raise StageError(
            f"the ONNX graph's label differs from the model's decision on {wrong} of "
            f"{len(frame)} test rows (threshold {threshold})"
        )


def describe(graph: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """Metadata a server needs to answer on the common contract, inside the artifact itself."""
    meta = {
        "model": spec.key,
        "task": spec.task,
        "classes": json.dumps(spec.class_names),
        "fields": json.dumps(
            {n: f.model_dump(exclude_defaults=True) for n, f in spec.fields.items()}
        ),
        "target": spec.target.column,
    }
    onnx.helper.set_model_props(graph, meta)
    graph.doc_string = spec.description
    onnx.checker.check_model(graph)
    return graph


def main_work(spec: ModelSpec, root: Path) -> None:
    flavor = get_project(spec.key).FLAVOR
    model = flavor.load(paths.model_dir(spec.key, root), spec)
    graph = describe(flavor.to_onnx(model, spec), spec)
    test = pd.read_parquet(paths.split_dir(spec.key, root) / "test.parquet")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    native = flavor.predict(model, test, spec)
    worst = check_parity(native, onnx_predict(session, test, spec), spec)
    if spec.task != "regression":
        check_labels(session, test, spec, native, decision_threshold(model))
    target = paths.onnx_model(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph, target)
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
