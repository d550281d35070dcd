"""dvc.yaml: one foreach definition per stage yields every stage for every catalog entry."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from contract.paths import ROOT
from tests.conftest import CATALOG, KEYS

STAGES = ["prepare", "snapshot", "train", "evaluate", "export", "register"]
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


def _estimators_imported(path: Path) -> set[str]:
    from tests.unit.test_tasks import imported_modules

    prefix = "pipelines.estimators."
    return {
        m.removeprefix(prefix).split(".")[0] for m in imported_modules(path) if m.startswith(prefix)
    }


def test_each_entry_trains_on_its_own_estimator_only() -> None:
    """train@<key> depends on the one estimator its catalog entry names, which is the one its
    module imports: editing the forecaster retrains energy_forecast, not the other twelve."""
    train = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]["deps"]
    estimators = [d for d in train if d.startswith("pipelines/estimators/")]
    assert estimators == ["pipelines/estimators/${item.estimator}.py"]
    for key, spec in CATALOG.items():
        assert (ROOT / "pipelines" / "estimators" / f"{spec.estimator}.py").is_file(), key
        module = ROOT / "pipelines" / "models" / f"{key}.py"
        assert _estimators_imported(module) == {spec.estimator}, key


def test_estimators_and_flavors_stand_alone() -> None:
    """An estimator imports no other estimator (its train stage names it alone), and the
    flavors import no estimator nor catalog module (only the lookup of an entry's module by
    its key): they ask the fitted model instead."""
    for path in (ROOT / "pipelines" / "estimators").glob("*.py"):
        others = _estimators_imported(path) - {path.stem}
        assert not others, f"{path.name} imports estimators {sorted(others)}"
    from tests.unit.test_tasks import imported_modules

    for path in (ROOT / "pipelines" / "flavors").glob("*.py"):
        wrong = {
            m
            for m in imported_modules(path)
            if m.startswith(("pipelines.models.", "pipelines.estimators."))
            and (path.stem, m.split(".")[2]) not in FLAVOR_OF_ITS_ESTIMATOR
            and m != "pipelines.models.get_project"  # the entry by its key, not a module
        }
        assert not wrong, f"{path.name} imports {sorted(wrong)}"


# the flavors made for one estimator, which drive it through the stages
FLAVOR_OF_ITS_ESTIMATOR = {("factors", "factorization"), ("retrieval", "sentence_index")}
