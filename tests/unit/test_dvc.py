"""dvc.yaml: one foreach definition per stage yields every stage for every catalog entry."""

import subprocess
import sys
from pathlib import Path

import yaml

from pipelines.paths import ROOT
from tests.conftest import KEYS

STAGES = ["prepare", "train", "evaluate", "export", "register"]


def test_every_stage_is_a_foreach_over_the_catalog() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(pipeline) == STAGES
    assert all(stage["foreach"] == "${models}" for stage in pipeline.values())


def test_dvc_resolves_a_stage_per_model() -> None:
    dvc = Path(sys.executable).parent / "dvc"
    listed = subprocess.run(
        [str(dvc), "stage", "list", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert sorted(listed) == sorted(f"{s}@{k}" for s in STAGES for k in KEYS)


def test_stages_read_only_their_own_entry() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in pipeline.values():
        for param in stage["do"].get("params", []):
            assert param.startswith("models.${key}."), param
