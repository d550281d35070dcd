"""Stage evaluate@<key>: metrics JSON and plots of the native model on the test split."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import paths, plots
from pipelines.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.flavors.torch import HISTORY_FILE
from pipelines.log import get_logger
from pipelines.metrics import decision_threshold, floors_met, score
from pipelines.models import get_project
from pipelines.schema import encode_target

log = get_logger(__name__)


def draw(
    spec: ModelSpec,
    y: np.ndarray,
    predicted: np.ndarray,
    importance: pd.DataFrame | None,
    history: list[dict[str, float]] | None,
    out: Path,
) -> list[str]:
    """The plots that fit the task; returns the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Callable[[Path], None]] = {}
    if spec.task == "regression":
        written["residuals.png"] = lambda p: plots.residuals(y, predicted, spec.key, p)
    else:
        if spec.task == "binary":
            written["roc.png"] = lambda p: plots.roc(y, predicted[:, 1], spec.key, p)
        written["confusion.png"] = lambda p: plots.confusion(
            y, predicted.argmax(1), spec.class_names, spec.key, p
        )
    if importance is not None:
        written["importance.png"] = lambda p: plots.importance(importance, spec.key, p)
    if history:
        written["learning_curve.png"] = lambda p: plots.learning_curve(history, spec.key, p)
    for name, render in written.items():
        render(out / name)
    return list(written)


def main_work(spec: ModelSpec, root: Path) -> None:
    project = get_project(spec.key)
    model = project.FLAVOR.load(paths.model_dir(spec.key, root), spec)
    test = pd.read_parquet(paths.split_dir(spec.key, root) / "test.parquet")
    y, predicted = encode_target(test, spec), project.FLAVOR.predict(model, test, spec)
    metrics = score(spec, y, predicted, decision_threshold(model)) | {"test_rows": len(test)}
    target = paths.metrics_file(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2) + "\n")
    history_file = paths.model_dir(spec.key, root) / HISTORY_FILE
    history = json.loads(history_file.read_text()) if history_file.exists() else None
    plots_dir = paths.plots_dir(spec.key, root)
    shutil.rmtree(plots_dir, ignore_errors=True)
    drawn = draw(spec, y, predicted, project.FLAVOR.explain(model, test, spec), history, plots_dir)
    met = floors_met(spec, metrics)
    log.info(
        "%s: %s | floors %s | plots %s",
        spec.key,
        ", ".join(f"{k}={metrics[k]:.4f}" for k in spec.floors),
        "met" if all(met.values()) else f"MISSED {[k for k, ok in met.items() if not ok]}",
        ", ".join(drawn),
    )


def main(argv: list[str] | None = None) -> None:
    run_stage("evaluate", main_work, argv)


if __name__ == "__main__":
    main()
