"""How a kind of native model is fitted, saved, scored, explained and exported to ONNX.

`Flavor` is the protocol; `sklearn`, `torch` and `factors` (matrix factorisation)
implement it. A catalog module names its
flavor and builds the estimator; the generic stages do the rest.
"""

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx
import pandas as pd

from contract.catalog import ModelSpec


@runtime_checkable
class Flavor(Protocol):
    def fit(self, estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> Any:
        """Fit on the train split; `out` may receive training history (learning curve)."""

    def predict(self, model: Any, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
        """Class probabilities [N, C] or predicted values [N]: what the ONNX graph must match."""

    def save(self, model: Any, directory: Path) -> None: ...

    def load(self, directory: Path, spec: ModelSpec) -> Any: ...

    def to_onnx(self, model: Any, spec: ModelSpec) -> onnx.ModelProto:
        """The whole inference pipeline, raw fields in."""

    def explain(self, model: Any, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
        """Feature importance (feature, importance), or None where it does not apply."""


def judged_test_split(flavor: Flavor, model: Any, split: Path) -> pd.DataFrame:
    """The test rows (split/test.parquet) evaluate and export judge a model on: all of them,
    unless its flavor bounds them (`judged(model, test)`: a search's queries in quick runs)."""
    test = pd.read_parquet(split / "test.parquet")
    bound = getattr(flavor, "judged", None)
    return bound(model, test) if callable(bound) else test
