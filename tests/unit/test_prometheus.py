"""infra/prometheus: the config and rules pass promtool, and every alert has a unit test."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.paths import ROOT
from services.tools.stack import plan
from tests.conftest import KEYS

PROMETHEUS = ROOT / "infra" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make setup` installs Debian's prometheus package")
    return subprocess.run(
        [tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.mark.lint
def test_config_is_valid() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.lint
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *(str(p) for p in sorted(PROMETHEUS.glob("rules/*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.lint
def test_rule_unit_tests_pass() -> None:
    tests = sorted(str(p.relative_to(PROMETHEUS)) for p in PROMETHEUS.glob("tests/*.yml"))
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for path in PROMETHEUS.glob("rules/*.yml")
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        case["alertname"]
        for path in PROMETHEUS.glob("tests/*.yml")
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert alerts and alerts <= fired, f"alerts without a firing test: {alerts - fired}"


def test_scrape_targets_are_the_local_stack() -> None:
    """Every model service of `make serve`, at the port the stack gives it."""
    config = load(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "model-services"]
    targets = {entry["labels"]["service"]: entry["targets"][0] for entry in job["static_configs"]}
    stack = {p["name"]: p["url"].removeprefix("http://") for p in plan() if p["name"] in KEYS}
    assert targets == stack
