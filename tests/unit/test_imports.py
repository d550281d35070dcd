"""Heavy libraries stay out of the processes that do not need them."""

import os
import subprocess
import sys
from pathlib import Path

from pipelines.paths import ROOT

SERVICE = """
import sys
from services.app import create_app
create_app("churn")  # a Feast-backed model: everything a service imports
print("evidently" in sys.modules)
"""


def test_model_services_do_not_import_evidently(tmp_path: Path) -> None:
    """`import evidently` takes seconds and memory: only the drift service pays for it."""
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SERVE_PREDICTION_LOG": f"sqlite:///{tmp_path / 'log.sqlite'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", SERVICE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
