"""A temporary copy of the project on reduced params, with its own git repo and registry.

Shared by the integration tests (which change it), the model tier (which checks the models of
a snapshot of what its first `dvc repro` made) and the serving tests (which serve that snapshot).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from contract.paths import ROOT

REDUCED_PARAMS = Path(__file__).parent / "integration" / "reduced_params.yaml"
# What the model and serving tests need of a trained workspace, copied before any test changes it
SNAPSHOT = (
    "params.yaml",
    "artifacts",
    "models",  # the native models: the model tier's behavioural tests load them
    "reports/metrics",
    "data/split",
    "data/production",  # what register's gate compares on (snapshot@<key>)
    "feature_repo",
    "data/feast",
    # the registry as that repro left it (every model v1 @champion): the serving tests and the
    # dashboards serve copies of it; its artifacts stay in the workspace's mlruns/artifacts,
    # which later runs only add to
    "mlruns/mlflow.db",
)
BIN = Path(sys.executable).parent


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


# `dvc repro` of the whole workspace: 11 minutes alone, 19 beside the deploy tier's image
# builds from nothing, 22 on a slow day: 30 minutes would leave too little margin
RUN_TIMEOUT = 3600


class Project:
    """The copy, with helpers to edit its catalog and run DVC in it."""

    def __init__(self, root: Path, tracking_uri: str) -> None:
        self.root, self.tracking_uri = root, tracking_uri
        self.trained: Path | None = None  # snapshot of the first repro's outputs
        self.env = os.environ | {
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_ARTIFACT_ROOT": (root / "mlruns" / "artifacts").as_uri(),
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(root),
        }

    def params(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict[str, Any]) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def edit_model(self, key: str, overlay: dict[str, Any]) -> None:
        params = self.params()
        params["models"][key] = merge(params["models"][key], overlay)
        self.write_params(params)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


def copy_project(target: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a fresh clone (plus edits) would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith(("data/", "models/", "artifacts/", "reports/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def build(root: Path) -> Project:
    """Copy the project to `root`, commit it, reduce its params and run `dvc repro` there."""
    copy_project(root)
    (root / "dvc.lock").unlink(missing_ok=True)
    copy = Project(root, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    reduced = yaml.safe_load(REDUCED_PARAMS.read_text())
    copy.write_params(merge(copy.params(), {"models": reduced}))
    copy.run("git", "init", "-q")
    copy.run("git", "add", "-A")
    copy.run(
        "git",
        "-c",
        "user.name=ci",
        "-c",
        "user.email=ci@localhost",
        "commit",
        "-qm",
        "reduced copy",
    )
    copy.run("dvc", "repro")
    return copy


def snapshot(project: Project, target: Path) -> Path:
    """The trained outputs as the first repro left them (later tests retrain the workspace)."""
    for name in SNAPSHOT:
        source = project.root / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target
