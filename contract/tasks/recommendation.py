"""Recommendation: a user's top-k items with predicted ratings, or the popular items for a
user the model never saw (movie_recs). The one field is the user; the target is a user's
rating of an item (`target.item`), judged as ratings and as the served ranking."""

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    Plot,
    Served,
    decided,
    no_margin,
    regression_metrics,
    served_as_is,
    whole_graph_card,
)
from contract.tasks.common import no_payload_change as payload
from contract.tasks.outcomes import at_k, items_outcome
from contract.tasks.outcomes import item_outcomes as true_outcomes
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "payload", "targets", "true_outcomes"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, True, True
# an outcome is a set of ids, not a row the model was fitted on
LEARNS_FROM_OUTCOMES = False
NATIVE = "values"  # the predicted ratings of the frame's (user, item) pairs
RELATIVE_PARITY = False
REFERENCE_SPLIT = "train"
BULK = True
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = True
DISCRETE_TARGET = True  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = ""

# what it shares with other task kinds (contract/tasks/common.py)
labels = decided
card = whole_graph_card

# graph outputs the pipeline scores held-out ratings with; the service never returns them
PIPELINE_OUTPUTS = ("ratings", "baseline", "catalog")
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()


def validate(spec: "ModelSpec") -> None:
    if not (
        spec.target.item
        and spec.target.item_name
        and [f.type for f in spec.fields.values()] == ["int"]
    ):
        raise ValueError(
            "a recommendation task needs target.item, target.item_name and exactly one "
            "field, the user id (int)"
        )


def class_names(spec: "ModelSpec") -> list[str]:
    return ["personalised", "popular"]  # how a user's list was made


def target_column(spec: "ModelSpec") -> Any:
    import pandera.pandas as pa

    return pa.Column(float, checks=[pa.Check.ge(0)], nullable=False, coerce=True)


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return y.to_numpy(dtype=np.float64)


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The predicted ratings of the held-out pairs (the ranking's metrics: the flavor's)."""
    return regression_metrics(spec, y, predicted)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {
        "ratings.png": ("ratings", (y, predicted)),
        "ranking.png": ("ranking", (views["ranking"],)),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    item, name = served.spec.target.item, served.spec.target.item_name
    return [
        {
            "recommendations": [
                {item: i, name: n.decode() if isinstance(n, bytes) else n, "score": s}
                for i, n, s in zip(ids, names, scores, strict=True)
            ],
            "fallback": cold,
        }
        for ids, names, scores, cold in zip(
            result["items"].tolist(),
            result["names"].tolist(),
            result["scores"].tolist(),
            result["fallback"].reshape(-1).tolist(),
            strict=True,
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The top recommendation's predicted rating, labelled by how the list was made."""
    listed = prediction.get("recommendations") or []
    made = (
        class_names(spec)[int(bool(prediction["fallback"]))] if "fallback" in prediction else None
    )
    return {SCORE: listed[0]["score"] if listed else None, LABEL: made}


# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = PIPELINE_OUTPUTS
serve = served_as_is
decisive = no_margin


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """Each row's predicted rating of its item (`target.item`) from the graph's ratings of
    every item of its catalog; an item the model never saw gets the baseline."""
    assert spec.target.item
    items = frame[spec.target.item].to_numpy(np.int64)
    catalog = outputs["catalog"]
    position = np.minimum(np.searchsorted(catalog, items), len(catalog) - 1)
    known = catalog[position] == items
    column = np.where(known, position, 0)
    ratings = np.take_along_axis(outputs["ratings"], column[:, None], axis=1)[:, 0]
    return np.where(known, ratings, outputs["baseline"]).astype(np.float64)


def outcome(spec: "ModelSpec") -> Any:
    """The items (`target.item` ids) the user chose after the recommendation."""
    return items_outcome()


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """The served ranking against the items chosen: precision, recall and hit rate at k
    (precision_at_k as the evaluate stage reports it for held-out ratings), MRR."""
    item = spec.target.item
    ranked = [[str(r[item]) for r in p["recommendations"]] for p in predictions]
    return at_k(ranked, outcomes, int(spec.params["top_k"]))
