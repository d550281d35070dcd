"""The models the reduced workspace's first `dvc repro` trained (tests/workspace.py), loaded
as the evaluate and export stages load them: the tier checks what the pipeline made instead
of fitting a copy of every model itself (18 fits, about 12 minutes on two cores in CI)."""

from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from contract import paths
from contract.catalog import ModelSpec, get_spec
from pipelines.models import get_project

WORKSPACE: list[Path] = []  # the snapshot of the first repro, set once per session


@pytest.fixture(scope="session", autouse=True)
def workspace_models(trained: Path) -> Path:
    """The tier's models come from the session's reduced workspace (built once, shared)."""
    WORKSPACE[:] = [trained]
    return trained


@cache
def trained(key: str) -> tuple[ModelSpec, Any]:
    """The entry on the workspace's (reduced) params and its native model, as trained."""
    (root,) = WORKSPACE
    spec = get_spec(key, root / "params.yaml")
    return spec, get_project(key).FLAVOR.load(paths.model_dir(key, root), spec)


def score(key: str, rows: list[dict[str, Any]]) -> Any:
    """Positive-class probability (binary) or value (regression) per row of raw fields."""
    spec, model = trained(key)
    predicted = get_project(key).FLAVOR.predict(model, pd.DataFrame(rows), spec)
    return predicted[:, 1] if spec.task == "binary" else predicted
