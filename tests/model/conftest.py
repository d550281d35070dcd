"""Models trained once per session on the real train split (quick settings for the CNN)."""

import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from contract.catalog import ModelSpec
from pipelines.models import get_project
from tests.conftest import prepared, quick_spec


@cache
def trained(key: str) -> tuple[ModelSpec, Any]:
    spec = quick_spec(key)
    project = get_project(key)
    _, train, _ = prepared(key)
    out = Path(tempfile.mkdtemp(prefix=f"model-tier-{key}-"))
    model = project.FLAVOR.fit(project.build(spec), train, spec, out)
    project.FLAVOR.save(model, out)  # as the train stage does (a search's index is read back)
    return spec, model


def score(key: str, rows: list[dict[str, Any]]) -> Any:
    """Positive-class probability (binary) or value (regression) per row of raw fields."""
    spec, model = trained(key)
    predicted = get_project(key).FLAVOR.predict(model, pd.DataFrame(rows), spec)
    return predicted[:, 1] if spec.task == "binary" else predicted
