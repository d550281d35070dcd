"""Shared fixtures: the catalog, throwaway MLflow registries, pipeline workspaces."""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pandas as pd
import pytest

from contract.catalog import load_catalog
from contract.paths import ROOT
from contract.settings import get_settings
from pipelines.prepare import prepare
from pipelines.sources import load_source
from tests.workspace import Project, build, snapshot

CATALOG = load_catalog()
KEYS = sorted(CATALOG)


@cache
def feast_root() -> Path:
    """A scratch project root with feature_repo/ applied (the Feast-backed entries' joins)."""
    root = Path(tempfile.mkdtemp(prefix="feast-"))
    shutil.copytree(ROOT / "feature_repo", root / "feature_repo")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    env.pop("FEAST_FS_YAML_FILE_PATH", None)
    subprocess.run(
        [sys.executable, "-m", "pipelines.features", "apply", "--root", str(root)],
        cwd=root, env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return root


@cache
def prepared(key: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(raw, train, test) of the real data set, as the prepare stage makes them."""
    spec = CATALOG[key]
    return prepare(load_source(spec.source), spec, feast_root() if spec.features else ROOT)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite registry with its artifacts in tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The whole project trained on reduced params in a temporary copy (minutes, once).

    A snapshot of what the first `dvc repro` made is taken at once, because the
    integration tests go on to retrain the workspace.
    """
    copy = build(tmp_path_factory.mktemp("project"))
    copy.trained = snapshot(copy, tmp_path_factory.mktemp("trained"))
    return copy


@pytest.fixture(scope="session")
def trained(project: Project) -> Path:
    """Params, ONNX artifacts, metrics and splits of the workspace's first `dvc repro`."""
    assert project.trained is not None
    return project.trained
