"""tests/timings.py: the steps of `make test` timed, and the table that ends every `.ci/run`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.paths import ROOT
from tests import timings


def lane(folder: Path, name: str, tests: dict[str, dict[str, object]]) -> None:
    (folder / f"{name}.json").write_text(json.dumps(tests))


def test_the_report_gives_each_step_each_tier_and_the_slowest_groups(tmp_path: Path) -> None:
    assert timings.step(tmp_path, "lint", [sys.executable, "-c", "pass"]) == 0
    lane(
        tmp_path,
        "slow",
        {
            "tests/serving/test_contract.py::test_parity[titanic]": {
                "outcome": "passed", "setup": 100.0, "call": 2.0, "teardown": 0.5,
            },
            "tests/serving/test_contract.py::test_parity[churn]": {
                "outcome": "failed", "setup": 0.0, "call": 3.0, "teardown": 0.0,
            },
            "tests/unit/test_gate.py::test_floor": {"outcome": "passed", "call": 0.25},
        },
    )  # fmt: skip
    table = timings.report(tmp_path)
    assert "| lint (rc 0) |" in table
    assert "| serving | 2 | 1 | 106 s |" in table  # two tests, one passed, 105.5 s in all
    assert "| unit | 1 | 1 | 0 s |" in table
    # the eighteen models of a generic test are one row, its set-up shown apart
    assert "| tests/serving/test_contract.py::test_parity[*] | 2 | 105.5 | 100.0 |" in table
    assert table.index("| serving |") < table.index("| unit |")  # costliest first


def test_a_failed_step_is_recorded_with_its_code_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = timings.step(tmp_path, "fast", [sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3
    assert "| fast (rc 3) |" in capsys.readouterr().out
    steps = [json.loads(line) for line in (tmp_path / timings.STEPS).read_text().splitlines()]
    assert [(s["step"], s["rc"]) for s in steps] == [("fast", 3)]


def test_a_pytest_run_records_every_test_by_phase_and_outcome(tmp_path: Path) -> None:
    tests = tmp_path / "tests" / "unit"
    tests.mkdir(parents=True)
    (tests / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n    assert False\n"
        "def test_skipped():\n    pytest.skip('no server')\n"
    )
    (tmp_path / "conftest.py").write_text(
        "from tests import timings\ndef pytest_configure(config):\n    timings.register(config)\n"
    )
    out = tmp_path / "timings"
    env = {"PYTHONPATH": str(ROOT), timings.DIR_VARIABLE: str(out), "TEST_TIMINGS_LANE": "fast"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    recorded = json.loads((out / "fast.json").read_text())
    outcomes = {nodeid.rsplit("::", 1)[1]: test["outcome"] for nodeid, test in recorded.items()}
    assert outcomes == {"test_ok": "passed", "test_bad": "failed", "test_skipped": "skipped"}
    assert all({"setup", "call", "teardown"} <= set(test) for test in recorded.values())
