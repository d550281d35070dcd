"""Stage evaluate@<key>: metrics JSON and plots of the native model on the test split."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract import paths
from contract.catalog import ModelSpec
from pipelines import plots
from pipelines.cli import run_stage
from pipelines.flavors import Flavor, judged_test_split
from pipelines.log import get_logger
from pipelines.metrics import decision_threshold, fitted_facts, floors_met
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
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> list[str]:
    """The plots the task asks for (contract/tasks/<task>.py `plots`), the importance and
    the learning curve where the model has them; returns the file names written.

    `views`: what a task is drawn from beyond its predictions, as the flavor's `report`
    gathers it (a segmentation's space and its search over k, a recommender's ranking
    curve, a forecast's months and first week, a search's recall by nprobe)."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = spec.task_kind.plots(spec, y, predicted, threshold, views or {})
    if importance is not None:
        wanted["importance.png"] = ("importance", (importance,))
    if history:
        wanted["learning_curve.png"] = ("learning_curve", (history,))
    for name, (drawing, data) in wanted.items():
        getattr(plots, drawing)(*data, spec.key, out / name)
    return list(wanted)


def task_metrics(
    spec: ModelSpec,
    flavor: Flavor,
    model: Any,
    test: pd.DataFrame,
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, views): the task's scores, what the model knows of itself, and what its
    flavor measures beyond predictions (`report`: a search against exact search, a
    forecast against the seasonal-naive baseline, the served lists against popularity)."""
    report = getattr(flavor, "report", None)
    views, found = report(model, spec, test, predicted, root) if callable(report) else ({}, {})
    metrics = spec.task_kind.score(spec, y, predicted, threshold, views) | fitted_facts(model)
    return metrics | found, views


def main_work(spec: ModelSpec, root: Path) -> None:
    project = get_project(spec.key)
    model = project.FLAVOR.load(paths.model_dir(spec.key, root), spec)
    test = judged_test_split(project.FLAVOR, model, paths.split_dir(spec.key, root))
    y, predicted = encode_target(test, spec), project.FLAVOR.predict(model, test, spec)
    threshold = decision_threshold(model)
    metrics, views = task_metrics(spec, project.FLAVOR, model, test, y, predicted, threshold, root)
    metrics["test_rows"] = len(test)
    target = paths.metrics_file(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2) + "\n")
    history_file = paths.model_dir(spec.key, root) / paths.HISTORY_NAME
    history = json.loads(history_file.read_text()) if history_file.exists() else None
    plots_dir = paths.plots_dir(spec.key, root)
    shutil.rmtree(plots_dir, ignore_errors=True)
    importance = project.FLAVOR.explain(model, test, spec)
    drawn = draw(spec, y, predicted, importance, history, plots_dir, threshold, views)
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
