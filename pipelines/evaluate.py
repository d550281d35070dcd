"""Stage evaluate@<key>: metrics JSON and plots of the native model on the test split."""

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import paths, plots
from pipelines.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.flavors import factors as factors_flavor
from pipelines.flavors import judged_test_split
from pipelines.flavors import retrieval as retrieval_flavor
from pipelines.flavors import sklearn as sklearn_flavor
from pipelines.log import get_logger
from pipelines.metrics import (
    decided,
    decision_threshold,
    fitted_facts,
    floors_met,
    labels_of,
    score,
)
from pipelines.models import forecasting, get_project
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
    """The plots that fit the task; returns the file names written.

    `views`: what a task is drawn from beyond its predictions, as `task_views` gathers it
    (a segmentation's space and its search over k, a recommender's ranking curve, a
    forecast's months and first week, a search's recall by nprobe and similarity by rank)."""
    out.mkdir(parents=True, exist_ok=True)
    views = views or {}
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
    elif spec.task == "forecast":
        written["forecast_week.png"] = lambda p: plots.forecast_week(views["week"], spec.key, p)
        written["mape_by_month.png"] = lambda p: plots.mape_by_month(views["by_month"], spec.key, p)
    elif spec.task == "retrieval":
        written["recall_by_nprobe.png"] = lambda p: plots.recall_by_nprobe(
            views["nprobe"], spec.key, p
        )
        written["similarity.png"] = lambda p: plots.similarity(
            views["scores"], views["relevant_by_rank"], spec.key, p
        )
    elif spec.task == "recommendation":
        written["ratings.png"] = lambda p: plots.ratings(y, predicted, spec.key, p)
        written["ranking.png"] = lambda p: plots.ranking(views["ranking"], spec.key, p)
    elif spec.task == "clustering":
        labels = labels_of(spec, predicted, None)
        clusters = views["clusters"]
        written["segments_pca.png"] = lambda p: plots.segments_pca(
            views["embedding"], labels, spec.key, p
        )
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


def forecast_report(
    spec: ModelSpec,
    project: Any,
    model: Any,
    train: pd.DataFrame,
    test: pd.DataFrame,
    predicted: np.ndarray,
) -> tuple[dict[str, Any], dict[str, float]]:
    """(plot data, metrics): the seasonal-naive baseline (each step a week before) and a
    walk-forward run that refits on everything before each test month."""
    assert spec.target.time
    time, y = spec.target.time, encode_target(test, spec)
    naive = forecasting.seasonal_naive(
        test, model.layout.history, model.horizon, 7 * model.steps_per_day
    )

    def fit_predict(known: pd.DataFrame, target: pd.DataFrame) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            refit = project.FLAVOR.fit(project.build(spec), known, spec, Path(tmp))
        return np.asarray(project.FLAVOR.predict(refit, target, spec))

    walked = forecasting.walk_forward(fit_predict, train, test, time)
    walk = np.stack(walked["forecast"].to_list())
    mape = score(spec, y, predicted)["mape"]
    naive_mape = score(spec, y, naive)["mape"]
    walk_mape = score(spec, y, walk)["mape"]
    metrics = {
        "naive_mape": naive_mape,
        "improvement_over_naive": round(1 - mape / naive_mape, 6),
        "walk_forward_mape": walk_mape,
        "walk_forward_improvement": round(1 - walk_mape / naive_mape, 6),
    }
    table = forecasting.by_month(
        test, time, y, {"model": predicted, "walk-forward": walk, "seasonal naive": naive}
    )
    week = slice(0, 7)
    views = {
        "by_month": table,
        "week": {
            "start": test[time].iloc[0],
            "actual": y[week].reshape(-1),
            "model": predicted[week].reshape(-1),
            "seasonal naive": naive[week].reshape(-1),
        },
    }
    return views, metrics


def task_metrics(
    spec: ModelSpec,
    project: Any,
    model: Any,
    test: pd.DataFrame,
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, views): the task's scores, and what its plots are drawn from."""
    if spec.task == "retrieval":  # judged as a search: against exact search, and exported
        return retrieval_flavor.search_metrics(model, test, spec, predicted)
    views: dict[str, Any] = {}
    embedding = None
    if spec.task == "clustering":  # judged in the space it clusters, with its own facts
        embedding = sklearn_flavor.embed(model, test, spec)
        views = {"embedding": embedding, "clusters": model.steps[-1][1]}
    metrics = score(spec, y, predicted, threshold, embedding) | fitted_facts(model)
    if spec.task == "forecast":  # against the seasonal-naive baseline, and walk-forward
        train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
        views, found = forecast_report(spec, project, model, train, test, predicted)
        metrics |= found
    if spec.task == "recommendation":  # the served lists, against popularity
        views = {"ranking": factors_flavor.ranking_curve(model, test, spec)}
        metrics |= factors_flavor.ranking_metrics(views["ranking"], model.top_k)
    return metrics, views


def main_work(spec: ModelSpec, root: Path) -> None:
    project = get_project(spec.key)
    model = project.FLAVOR.load(paths.model_dir(spec.key, root), spec)
    test = judged_test_split(project.FLAVOR, model, paths.split_dir(spec.key, root))
    y, predicted = encode_target(test, spec), project.FLAVOR.predict(model, test, spec)
    threshold = decision_threshold(model)
    metrics, views = task_metrics(spec, project, model, test, y, predicted, threshold, root)
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
