"""dvc.yaml: one foreach definition per stage yields every stage for every catalog entry."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from contract.paths import ROOT
from tests.conftest import CATALOG, KEYS

STAGES = ["prepare", "train", "evaluate", "export", "register"]
FEATURE_STAGES = ["features_apply", "features_materialize"]  # once, not per model


def per_model(pipeline: dict[str, Any]) -> dict[str, Any]:
    return {name: stage for name, stage in pipeline.items() if name not in FEATURE_STAGES}


def test_every_stage_is_a_foreach_over_the_catalog() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(pipeline) == sorted(STAGES + FEATURE_STAGES)
    assert all(stage["foreach"] == "${models}" for stage in per_model(pipeline).values())


def test_materialize_reads_every_feast_backed_entry() -> None:
    """The one stage that must name the Feast-backed entries: its deps list them all."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["features_materialize"]
    listed = {d.removeprefix("data/raw/") for d in stage["deps"] if d.startswith("data/raw/")}
    assert listed == {k for k in KEYS if CATALOG[k].features}


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
    expected = [f"{s}@{k}" for s in STAGES for k in KEYS] + FEATURE_STAGES
    assert sorted(listed) == sorted(expected)


def test_stages_read_only_their_own_entry() -> None:
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in per_model(pipeline).values():
        for param in stage["do"].get("params", []):
            assert param.startswith("models.${key}."), param
