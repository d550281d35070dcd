"""`make drift-demo` on the reduced-params workspace: traffic -> alert -> webhook -> gate.

It registers a new titanic version in the shared workspace, so it runs after the tests that
check the workspace's first registrations (pytest takes the modules in name order)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.workspace import Project

pytestmark = pytest.mark.slow


def test_shifted_traffic_fires_the_alert_and_retrains_through_the_gate(
    project: Project, tmp_path: Path
) -> None:
    before = {v.version for v in project.client().search_model_versions("name='titanic'")}
    demo = subprocess.run(
        [sys.executable, "-m", "services.tools.drift_demo", "--workspace", str(project.root),
         "--folder", str(tmp_path / "demo")],
        cwd=project.root, env=project.env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    output = demo.stdout + demo.stderr[-3000:]
    assert demo.returncode == 0, output
    for step in ("no drift", "ModelDriftDetected{model=titanic} is firing", "job promoted"):
        assert step in output or (step == "job promoted" and "job challenger" in output), output
    client = project.client()
    new = [v for v in client.search_model_versions("name='titanic'") if v.version not in before]
    assert len(new) == 1, output  # one drift episode, one retraining
    version = new[0]
    alias = version.tags["gate.alias"]
    assert f"version {version.version} -> @{alias}" in output
    assert client.get_model_version_by_alias("titanic", alias).version == version.version
    jobs = (tmp_path / "demo" / "drift" / "retraining").glob("*-titanic.log")
    assert "Running stage 'register@titanic'" in next(jobs).read_text()
