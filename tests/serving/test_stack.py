"""The local stack as `make serve` runs it: up, one prediction per model, status, down."""

import random
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipelines.paths import ROOT
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import Registry, inherited_environment

pytestmark = pytest.mark.slow


def stack(command: str, env: dict[str, str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.stack", command, "--root", str(root)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_stack_serves_every_model_and_stops_cleanly(registry: Registry, tmp_path: Path) -> None:
    base = random.randint(20_000, 40_000)  # a second stack beside one a developer may run
    env = inherited_environment() | {
        "MLFLOW_TRACKING_URI": registry.uri,
        "SERVE_CACHE_DIR": str(tmp_path / "cache"),
        "STACK_RUN_DIR": str(tmp_path / "run"),
        "STACK_BASE_PORT": str(base),
        "STACK_TRITON_PORT": str(base + 100),
        "STACK_DRIFT_PORT": str(base + 200),
        "STACK_PROMETHEUS_PORT": str(base + 201),
        "STACK_ALERTMANAGER_PORT": str(base + 202),
    }
    try:
        up = stack("up", env, registry.trained)
        assert up.returncode == 0, up.stdout + up.stderr
        for key in KEYS:
            assert f"ready  {key}" in up.stdout
        for process in ("triton-fashion_cnn", "drift", "prometheus", "alertmanager"):
            assert f"ready  {process}" in up.stdout
        # the stack's Prometheus scrapes every model service and the drift service
        targets = httpx.get(f"http://127.0.0.1:{base + 201}/api/v1/targets").json()
        scraped = {t["labels"]["service"] for t in targets["data"]["activeTargets"]}
        assert scraped == {*KEYS, "triton", "drift"}
        demo = stack("demo", env, registry.trained)
        assert demo.returncode == 0, demo.stdout + demo.stderr
        # one answer per model, plus the entity-keyed one of each Feast-backed model
        feast = [k for k in KEYS if CATALOG[k].features]
        assert demo.stdout.count("\n  -> ") == len(KEYS) + len(feast)
        assert all(f"{CATALOG[k].features.service} of " in demo.stdout for k in feast)  # type: ignore[union-attr]
        assert "Triton (PyTriton)" in demo.stdout
        assert stack("status", env, registry.trained).returncode == 0
    finally:
        down = stack("down", env, registry.trained)
    assert down.returncode == 0 and down.stdout.count("stopped") == len(KEYS) + 4
    assert not (tmp_path / "run" / "stack.json").exists()
