"""Stage command lines: bad input fails with one clear line and exit 2, touching nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

from contract.paths import ROOT


def stage(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "export", "register"])
def test_unknown_model_key(name: str, tmp_path: Path) -> None:
    result = stage(f"pipelines.{name}", "no_such_model", "--root", str(ROOT))
    assert result.returncode == 2
    assert "unknown model 'no_such_model'" in result.stderr and "house_prices" in result.stderr
    assert "Traceback" not in result.stderr


def test_register_without_artifacts_fails_before_mlflow(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.register", "titanic", "--root", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"MLFLOW_TRACKING_URI": env_uri, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert "missing artifacts/titanic/model.onnx" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the registry was never opened
