"""Clustering: each record's segment, its distance to the segment's centre and the
segment's profile (customer_segments). Unsupervised: the target is profiled per segment
(e.g. its churn rate), never an input."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    WHOLE_GRAPH,
    Plot,
    Served,
    no_class_names,
    output_as_native,
    positive_flags,
    require_positive,
    rounded,
    two_valued,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import no_outcome as outcome
from contract.tasks.outcomes import no_outcomes as true_outcomes
from contract.tasks.outcomes import no_performance as performance
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "outcome", "payload", "performance", "targets", "true_outcomes"]
SUPERVISED, STRATIFIED, LABELS_SERVED = False, True, True
LEARNS_FROM_OUTCOMES = False
NATIVE = "distances"  # to each segment's centre; the nearest is its own
RELATIVE_PARITY = False
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = True
DISCRETE_TARGET = True  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = ""

# what it shares with other task kinds (contract/tasks/common.py)
validate = require_positive
target_column = two_valued
class_names = no_class_names  # segments are found, not named in advance
encode_target = positive_flags


def segment_names(k: int) -> list[str]:
    return [f"segment {i + 1}" for i in range(k)]


def labels(predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    """The nearest segment of each row's distances [N, k]."""
    return np.asarray(predicted.argmin(axis=1))


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Distances [N, k] judged in the space the model clusters (`views["embedding"]`)."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    if not views or "embedding" not in views:
        raise ValueError("a segmentation is scored in the space it clusters: pass embedding")
    embedding = views["embedding"]
    found = labels(predicted, None)
    shares = np.bincount(found, minlength=predicted.shape[1]) / len(found)
    result = {
        "silhouette": m.silhouette_score(embedding, found),
        "davies_bouldin": m.davies_bouldin_score(embedding, found),
        "smallest_segment_share": shares.min(),
        "mean_distance": predicted.min(axis=1).mean(),
    }
    return rounded(result)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    clusters = views["clusters"]
    return {
        "segments_pca.png": ("segments_pca", (views["embedding"], labels(predicted, None))),
        "silhouette_by_k.png": (
            "silhouette_by_k",
            (clusters.silhouette_by_k_, clusters.n_clusters_),
        ),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    segments = served.segments
    return [
        {"label": segments[int(lab)]["segment"], "distance": min(d),
         "profile": segments[int(lab)]}
        for lab, d in zip(
            result["label"].reshape(-1).tolist(), result["distances"].tolist(), strict=True
        )
    ]  # fmt: skip


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The distance to its segment's centre, and the segment."""
    return {SCORE: prediction.get("distance"), LABEL: prediction.get("label")}


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "; never an input: each segment's rate of it is profiled",
        "artifact": WHOLE_GRAPH,
    }


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("distances",)


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "distances", vector=False)


def decisive(predicted: np.ndarray, threshold: float | None, tolerance: float) -> np.ndarray:
    """Rows not equidistant (within `tolerance`) from their two nearest centres."""
    near = np.sort(predicted, axis=1)
    return np.asarray(near[:, 1] - near[:, 0] > tolerance)


def serve(session: Any, directory: Any) -> Any:
    """The graph alone, which must carry its segments' profiles (the answer's)."""
    if "segments" not in session.get_modelmeta().custom_metadata_map:
        raise ValueError("a segmentation without segment profiles")
    return session
