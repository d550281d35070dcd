"""`make loop-demo` on the reduced-params workspace, which covers `make drift-demo`'s path too
(traffic -> alert -> Alertmanager -> webhook -> retraining -> gate): a shift served and
labelled, ModelPerformanceDegraded, a retraining on the labelled production records that is
better on the ones it never saw, its canary promoted, a broken candidate rolled back.

It registers new titanic versions in the shared workspace, so it runs after the tests that
check the workspace's first registrations (pytest takes the modules in name order)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.tools.loop_demo import TIMEOUT_S
from tests.workspace import Project

pytestmark = pytest.mark.slow


def test_the_loop_learns_from_outcomes_and_canaries_decide(
    project: Project, tmp_path: Path
) -> None:
    client = project.client()
    before = {v.version for v in client.search_model_versions("name='titanic'")}
    champion = client.get_model_version_by_alias("titanic", "champion").version
    demo = subprocess.run(
        [sys.executable, "-m", "services.tools.loop_demo", "--workspace", str(project.root),
         "--folder", str(tmp_path / "demo")],
        cwd=project.root, env=project.env, capture_output=True, text=True,
        timeout=TIMEOUT_S + 300,  # the demo's own deadline starts once its stack is up
    )  # fmt: skip
    output = demo.stdout + demo.stderr[-3000:]
    assert demo.returncode == 0, output
    for step in (
        "ModelPerformanceDegraded{model=titanic} is firing",
        "job canary",
        "canary promoted",
        "canary rolled_back",
        "CanaryRolledBack{model=titanic} is firing",
    ):
        assert step in output, f"{step!r} not in:\n{output}"
    numbers = json.loads((tmp_path / "demo" / "loop-demo.json").read_text())
    # the shift hurt, and the retrained version is better where the world is now: on the
    # production window it never trained on, and on the canary's traffic
    assert numbers["after_shift"] < numbers["before"]
    assert numbers["retrained"] > numbers["window_champion"], numbers
    assert numbers["production_rows"] > 0
    canary = numbers["canary"]
    assert canary["challenger"]["value"] > canary["champion"]["value"], canary
    assert numbers["broken"]["challenger"]["value"] < numbers["broken"]["champion"]["value"]

    client = project.client()
    new = sorted(
        (v for v in client.search_model_versions("name='titanic'") if v.version not in before),
        key=lambda v: int(v.version),
    )
    assert len(new) == 2, [v.version for v in new]  # the retrained one, the broken one
    good, broken = new
    assert client.get_model_version_by_alias("titanic", "champion").version == good.version
    assert good.version != champion
    assert good.tags["canary"] == "promoted"
    assert broken.tags["canary"].startswith("rolled back")
    run = client.get_run(good.run_id)
    inputs = {(d.dataset.name, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert ("titanic-production", "training") in inputs, inputs
    assert ("titanic-holdout", "production_window") in inputs, inputs
    assert "production_window.roc_auc" in run.data.metrics
    jobs = sorted((tmp_path / "demo" / "drift" / "retraining").glob("*-titanic.log"))
    assert any("Running stage 'snapshot@titanic'" in j.read_text() for j in jobs)
