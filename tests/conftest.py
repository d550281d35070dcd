"""Shared fixtures: the catalog, throwaway MLflow registries, pipeline workspaces."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pytest

from contract.catalog import load_catalog
from contract.paths import ROOT
from contract.settings import get_settings
from pipelines.prepare import prepare
from pipelines.sources import load_source
from tests import timings
from tests.workspace import Project, build, snapshot

CATALOG = load_catalog()
KEYS = sorted(CATALOG)
# The servers a marker needs, and the command that starts each one on this machine
SERVERS = {
    "postgres": (
        ("127.0.0.1", 5432),
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "redis": (
        ("127.0.0.1", 6379),
        'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    timings.register(config)


def unavailable(reason: str) -> NoReturn:
    """A test that cannot run here: it fails in CI (CI=true), where every tier must run, and
    is skipped elsewhere; both with the reason."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a tier that cannot run fails, not skips)", pytrace=False)
    pytest.skip(reason)


@cache
def listening(address: tuple[str, int]) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(address) == 0


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `postgres` or `redis` needs that server listening (else `unavailable`),
    checked before its fixtures, which would connect."""
    for marker, (address, start) in SERVERS.items():
        if item.get_closest_marker(marker) and not listening(address):
            unavailable(f"no {marker} server on {address[0]}:{address[1]}; start it: {start}")


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
