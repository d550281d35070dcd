"""infra/alertmanager: the config passes amtool, and every alert reaches the receiver it should."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.paths import ROOT

CONFIG = ROOT / "infra" / "alertmanager" / "alertmanager.yml"
PROMETHEUS = ROOT / "infra" / "prometheus"
# The drift service owns the webhooks; it has no port constant of its own to import yet
DRIFT_SERVICE = "127.0.0.1:8200"
ALERTMANAGER = "127.0.0.1:9093"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("amtool")
    if tool is None:
        pytest.fail("amtool is missing: `make setup` installs Debian's prometheus-alertmanager")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in sorted(PROMETHEUS.glob("rules/*.yml"))
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_config_is_valid() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_retrain_alerts_reach_retraining_and_the_rest_default(rule: dict[str, Any]) -> None:
    labels = {"model": "churn", "alertname": rule["alert"]} | rule["labels"]
    matchers = [f"{name}={value}" for name, value in labels.items()]
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *matchers)
    assert result.returncode == 0, result.stdout + result.stderr
    expected = "retraining" if labels.get("action") == "retrain" else "default"
    assert result.stdout.split() == [expected]


def test_only_input_drift_and_measured_degradation_retrain() -> None:
    """Inputs that drifted, or outcomes that came back worse than promised (a retraining
    that learns from them); every other alert needs a person before anything is retrained."""
    retrain = {rule["alert"] for rule in alerts() if rule["labels"].get("action") == "retrain"}
    assert retrain == {"ModelDriftDetected", "ModelPerformanceDegraded"}


def test_inhibit_rules_name_existing_alerts() -> None:
    """A renamed alert would silently escape its inhibition."""
    names = {rule["alert"] for rule in alerts()}
    matchers = [
        matcher
        for inhibit in load(CONFIG)["inhibit_rules"]
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]
    ]
    assert matchers
    for matcher in matchers:
        name, value = matcher.split("=", 1)
        assert name == "alertname" and value.strip('"') in names, matcher


def test_prometheus_alertmanager_and_drift_service_agree() -> None:
    """Prometheus scrapes the drift service and alerts the Alertmanager that calls it back."""
    receivers = load(CONFIG)["receivers"]
    urls = {r["name"]: hook["url"] for r in receivers for hook in r["webhook_configs"]}
    assert urls == {
        "retraining": f"http://{DRIFT_SERVICE}/alerts",
        "default": f"http://{DRIFT_SERVICE}/alerts/log",
    }
    config = load(PROMETHEUS / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "drift"]
    assert [t for entry in job["static_configs"] for t in entry["targets"]] == [DRIFT_SERVICE]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == [ALERTMANAGER]
