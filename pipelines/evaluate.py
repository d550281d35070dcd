"""Stage evaluate@<key>: metrics JSON and plots of the native model on the test split."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import paths, plots
from pipelines.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.flavors import factors as factors_flavor
from pipelines.flavors import sklearn as sklearn_flavor
from pipelines.flavors.torch import HISTORY_FILE
from pipelines.log import get_logger
from pipelines.metrics import (
    decided,
    decision_threshold,
    fitted_facts,
    floors_met,
    labels_of,
    score,
)
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
    embedding: np.ndarray | None = None,
    clusters: Any = None,
    ranking: pd.DataFrame | None = None,
) -> list[str]:
    """The plots that fit the task; returns the file names written.

    A segmentation is drawn in the space it clusters (`embedding`), with the search over k
    its fitted estimator (`clusters`) ran; a recommender's `ranking` is its precision and
    recall at k against the popularity baseline."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Callable[[Path], None]] = {}
    if spec.task == "regression":
        written["residuals.png"] = lambda p: plots.residuals(y, predicted, spec.key, p)
    elif spec.task == "anomaly":
        assert threshold is not None
        names = spec.class_names
        written["roc.png"] = lambda p: plots.roc(y, predicted, spec.key, p)
        written["precision_recall.png"] = lambda p: plots.precision_recall(
            y, predicted, spec.key, p
        )
        written["scores.png"] = lambda p: plots.score_distribution(
            y, predicted, threshold, names, spec.key, p
        )
        written["confusion.png"] = lambda p: plots.confusion(
            y, decided(predicted, threshold), names, spec.key, p
        )
    elif spec.task == "recommendation":
        assert ranking is not None
        written["ratings.png"] = lambda p: plots.ratings(y, predicted, spec.key, p)
        written["ranking.png"] = lambda p: plots.ranking(ranking, spec.key, p)
    elif spec.task == "clustering":
        assert embedding is not None and clusters is not None
        labels = labels_of(spec, predicted, None)
        written["segments_pca.png"] = lambda p: plots.segments_pca(embedding, labels, spec.key, p)
        written["silhouette_by_k.png"] = lambda p: plots.silhouette_by_k(
            clusters.silhouette_by_k_, clusters.n_clusters_, spec.key, p
        )
    else:
        if spec.task == "binary":
            written["roc.png"] = lambda p: plots.roc(y, predicted[:, 1], spec.key, p)
        written["confusion.png"] = lambda p: plots.confusion(  # the served decision
            y, decided(predicted, threshold), spec.class_names, spec.key, p
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
    threshold = decision_threshold(model)
    embedding = None
    if spec.task == "clustering":  # judged in the space it clusters, with its own facts
        embedding = sklearn_flavor.embed(model, test, spec)
    metrics = score(spec, y, predicted, threshold, embedding) | fitted_facts(model)
    ranking = None
    if spec.task == "recommendation":  # the served lists, against popularity
        ranking = factors_flavor.ranking_curve(model, test, spec)
        metrics |= factors_flavor.ranking_metrics(ranking, model.top_k)
    metrics["test_rows"] = len(test)
    target = paths.metrics_file(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2) + "\n")
    history_file = paths.model_dir(spec.key, root) / HISTORY_FILE
    history = json.loads(history_file.read_text()) if history_file.exists() else None
    plots_dir = paths.plots_dir(spec.key, root)
    shutil.rmtree(plots_dir, ignore_errors=True)
    importance = project.FLAVOR.explain(model, test, spec)
    clusters = model.steps[-1][1] if embedding is not None else None
    drawn = draw(
        spec, y, predicted, importance, history, plots_dir, threshold, embedding, clusters,
        ranking,
    )  # fmt: skip
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
