"""The Feast feature store both sides open: the stages apply, materialize and join training
sets on it (pipelines/features.py), the service reads its online store.

Which store is used is Feast's own choice by environment: feature_repo/feature_store.yaml
(SQLite, files) unless FEAST_FS_YAML_FILE_PATH names another file, such as
feature_repo/feature_store.production.yaml (Redis, Postgres registry).
"""

import os
from pathlib import Path
from typing import Any

from contract.paths import ROOT

FS_YAML_ENV = "FEAST_FS_YAML_FILE_PATH"  # Feast's own variable, also honoured by its CLI


def repo_path(root: Path = ROOT) -> Path:
    return root / "feature_repo"


def fs_yaml(root: Path = ROOT) -> Path:
    """The feature_store.yaml in force: FEAST_FS_YAML_FILE_PATH (relative to root) or default."""
    chosen = os.environ.get(FS_YAML_ENV)
    if not chosen:
        return repo_path(root) / "feature_store.yaml"
    path = Path(chosen)
    return path if path.is_absolute() else root / path


def feature_store(root: Path = ROOT) -> Any:
    """A FeatureStore on this project's feature_repo/ (Feast is imported only when needed)."""
    keep_prometheus_environment()
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_path(root)), fs_yaml_file=fs_yaml(root))


def keep_prometheus_environment() -> None:
    """Import Feast (and its metrics module) now, and undo what that does to the environment.

    On import, feast.metrics points PROMETHEUS_MULTIPROC_DIR at a temporary folder of its
    own, for the whole process and every process it starts: model services started from it
    would then share one metrics folder. prometheus_client is imported first, so its values
    stay in memory here. Call it before anything imports Feast.
    """
    names = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR")
    saved = {name: os.environ.get(name) for name in names}
    import feast.metrics  # noqa: F401
    import prometheus_client.values  # noqa: F401  (picks its value class from the env now)

    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
