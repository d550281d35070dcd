"""A model's numbers on a held-out split: the task's metrics, what floors and the gate compare."""

from typing import Any

import numpy as np

from contract.catalog import ModelSpec


def decision_threshold(model: Any) -> float | None:
    """The threshold a model decides with: a classifier's tuned one (sklearn's
    TunedThresholdClassifierCV), or an outlier detector's on its anomaly score
    (-score_samples; sklearn flags a row when score_samples < offset_)."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    value = getattr(final, "best_threshold_", None)
    if value is None and hasattr(final, "offset_") and hasattr(final, "score_samples"):
        value = -final.offset_
    return None if value is None else float(value)


def fitted_facts(model: Any) -> dict[str, float]:
    """Numbers a fitted model knows about itself: a segmentation's chosen k and how well
    other seeds agree with its clusters (pipelines/estimators/clustering.py)."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if not hasattr(final, "stability_ari_"):
        return {}
    facts = {"stability_ari": final.stability_ari_, "n_segments": final.n_clusters_}
    return {k: round(float(v), 6) for k, v in facts.items()}


def labels_of(spec: ModelSpec, predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    """The served label's index of each native prediction (the task's decision)."""
    return spec.task_kind.labels(predicted, threshold)


def score(
    spec: ModelSpec,
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    embedding: np.ndarray | None = None,
) -> dict[str, float]:
    """The task's metrics of native predictions (contract/tasks/<task>.py `score`).

    `threshold`: the model's own decision threshold (a tuned classifier, a detector);
    `embedding`: the space a segmentation clusters, where it is judged."""
    views = None if embedding is None else {"embedding": embedding}
    return spec.task_kind.score(spec, y, predicted, threshold, views)


def floors_met(spec: ModelSpec, metrics: dict[str, float]) -> dict[str, bool]:
    return {name: bound.holds(metrics[name]) for name, bound in spec.floors.items()}


def not_worse(spec: ModelSpec, new: float, incumbent: float) -> bool:
    return new >= incumbent if spec.higher_is_better else new <= incumbent
