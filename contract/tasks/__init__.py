"""The task layer: one module per task kind, each a `Task`, found by the catalog's `task:`.

A task kind says everything that depends on what is predicted: how its catalog entry must
look, how its target is encoded and checked, how its predictions are scored against floors,
which plots show them, what a served record's answer looks like, the drift view of its
outputs, its model-card notes and its load-test records. The stages and the service ask the
task; nothing else branches on it. Adding a task kind is one module here, its entry in
`TASKS` and its tests (README "Add a task").
"""

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import pandas as pd

from contract.tasks import (
    anomaly,
    binary,
    clustering,
    detection,
    forecast,
    multiclass,
    recommendation,
    regression,
    retrieval,
    segmentation,
    transcription,
)
from contract.tasks.common import LABEL, SCORE, Plot, Served

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

# What a flavor's native predict returns, which the exported graph must match
Native = Literal[
    "values",
    "probabilities",
    "anomaly_scores",
    "distances",
    "embeddings",
    "detections",
    "transcripts",
]


class Task(Protocol):
    """What a task module provides (module-level constants and functions)."""

    SUPERVISED: bool  # the labels join training (False: they only judge it, held out)
    # a served record with its outcome is a training row (production.join may append them)
    LEARNS_FROM_OUTCOMES: bool
    STRATIFIED: bool  # a shuffled split keeps the target's proportions
    LABELS_SERVED: bool  # a served record carries a label (class, segment, decision)
    NATIVE: Native
    RELATIVE_PARITY: bool  # ONNX-vs-native parity relative to values above 1 (not absolute)
    REFERENCE_SPLIT: str  # the split whose rows stand for the traffic in drift reports
    BULK: bool  # clients send batches (a search is asked one query at a time)
    SCORE_VALUES: bool  # its served score is a value (histogram buckets), not in [0, 1]
    DISCRETE_TARGET: bool  # the target takes few values (its balance is worth showing)
    IMPORTANCE_SCORING: str  # permutation importance's scorer; "" where none applies
    JUDGED_OUTPUTS: tuple[str, ...]  # the graph outputs `native` reads
    PIPELINE_OUTPUTS: tuple[str, ...]  # graph outputs for scoring only, never served
    OUTPUT_VIEW: tuple[str, ...]  # numerical columns of the outputs' drift view besides SCORE

    def validate(self, spec: "ModelSpec") -> None:
        """Raise ValueError naming what the catalog entry lacks for this task."""

    def class_names(self, spec: "ModelSpec") -> list[str]: ...

    def target_column(self, spec: "ModelSpec") -> Any:
        """The target's pandera column of the raw-data schema."""

    def encode_target(self, y: pd.Series, spec: "ModelSpec") -> np.ndarray: ...

    def labels(self, predicted: np.ndarray, threshold: float | None) -> np.ndarray:
        """The served label's index of each native prediction."""

    def score(
        self,
        spec: "ModelSpec",
        y: np.ndarray,
        predicted: np.ndarray,
        threshold: float | None = None,
        views: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """The task's metrics (what floors and the gate compare)."""

    def plots(
        self,
        spec: "ModelSpec",
        y: np.ndarray,
        predicted: np.ndarray,
        threshold: float | None,
        views: dict[str, Any],
    ) -> dict[str, Plot]: ...

    def format(self, result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
        """The response of each record from the graph's outputs."""

    def answered(self, spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
        """The drift view of one served answer (as `format` made it and the prediction log
        keeps it): SCORE, LABEL where the task serves one, and the OUTPUT_VIEW columns; None
        for what the answer lacks. The reference and the traffic both go through it."""

    def card(self, spec: "ModelSpec") -> dict[str, str]:
        """The model card's notes: `target` (how the target is used), `artifact`."""

    def serve(self, session: Any, directory: Path) -> Any:
        """What is served on the graph's ONNX Runtime session (`directory`: the files
        registered beside it), with a session's run / get_inputs / get_outputs."""

    def native(
        self, outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec"
    ) -> np.ndarray:
        """The native model's prediction (what `score` takes) from the JUDGED_OUTPUTS."""

    def decisive(
        self, predicted: np.ndarray, threshold: float | None, tolerance: float
    ) -> np.ndarray:
        """Rows whose label float32 rounding within `tolerance` cannot flip."""

    def payload(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Held-out records as a load test sends them."""

    def outcome(self, spec: "ModelSpec") -> Any:
        """The type of one true outcome sent back for a served record (`/feedback`), as a
        pydantic annotation; None where the task has no ground truth to send back."""

    def performance(
        self, spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
    ) -> dict[str, float]:
        """The task's metrics over served predictions (as logged) and their outcomes."""

    def true_outcomes(self, frame: pd.DataFrame, spec: "ModelSpec") -> list[Any]:
        """Held-out rows' targets as /feedback takes them ([] where the task takes none)."""

    def evidently_view(
        self, spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
    ) -> tuple[Any, Any, Any] | None:
        """Evidently's view of a labelled window: (frame, DataDefinition, preset), for the
        drift service's performance report; None where no preset fits the outcomes."""

    def targets(self, outcomes: list[Any], spec: "ModelSpec", seen: pd.Series) -> Any:
        """Stored outcomes as the raw target column's values (true_outcomes' inverse; `seen`:
        the train split's target column, whose coding they take): labelled production
        records as training rows. None where LEARNS_FROM_OUTCOMES is False."""


TASKS: dict[str, ModuleType] = {
    "regression": regression,
    "binary": binary,
    "multiclass": multiclass,
    "anomaly": anomaly,
    "clustering": clustering,
    "recommendation": recommendation,
    "forecast": forecast,
    "retrieval": retrieval,
    "detection": detection,
    "segmentation": segmentation,
    "transcription": transcription,
}


def get_task(name: str) -> Task:
    """The task module of a catalog `task:` value."""
    return cast(Task, TASKS[name])


__all__ = ["LABEL", "SCORE", "TASKS", "Native", "Plot", "Served", "Task", "get_task"]
