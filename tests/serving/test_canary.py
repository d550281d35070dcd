"""Canary rollouts against real processes: a titanic service following the registry's
experiment tags, the drift service's controller, Prometheus (the guardrails, the
CanaryRolledBack alert) and Alertmanager (which hands the alert to the drift service).

The outcomes are the held-out split's true ones; for the rollback, the records the
challenger answered get the opposite ones: a world where the challenger is wrong."""

import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api import auth
from services.tools import monitoring
from services.tools.examples import as_records
from services.tools.processes import Process, free_port, started
from tests.conftest import CATALOG
from tests.serving.conftest import Registry, held_out

pytestmark = pytest.mark.slow
STEPS = [0.3, 0.6]
FEEDBACK = "test-feedback-token-0123456789"
TIMEOUT_S = 240
FINAL = ("promoted", "rolled_back")


@dataclass
class Rollout:
    urls: dict[str, str]
    admin: dict[str, str]
    registry: Registry
    webhook: str  # Alertmanager's credential on the drift service

    def drift(self, method: str, path: str) -> Any:
        response = httpx.request(method, self.urls["drift"] + path, headers=self.admin, timeout=60)
        assert response.status_code < 300, response.text
        return response.json()


@pytest.fixture
def rollout(registry: Registry, tmp_path: Path) -> Iterator[Rollout]:
    """titanic v1 @champion and v2 @challenger (the same artifact) in a registry of its own,
    and the four processes."""
    own = Registry(tmp_path / "registry", registry.trained)
    own.copy_version("titanic", "challenger")
    ports = {name: free_port() for name in ("model", "drift", "prometheus", "am")}
    admin, webhook = tmp_path / "secrets" / "admin", tmp_path / "secrets" / "webhook"
    headers = {"Authorization": f"Bearer {auth.local_token(admin)}"}
    hook_token = auth.local_token(webhook)
    mapped = {
        monitoring.model_port("titanic"): ports["model"],
        monitoring.DRIFT_PORT: ports["drift"],
        monitoring.ALERTMANAGER_PORT: ports["am"],
    }
    prometheus, alertmanager = monitoring.write(tmp_path, mapped, ports["drift"], webhook, True)
    log = f"sqlite:///{tmp_path / 'predictions.sqlite'}"
    common = {"MLFLOW_TRACKING_URI": own.uri}
    python = sys.executable
    processes = [
        Process("model", [python, "-m", "services.serve", "titanic", "--port", str(ports["model"])],
                ports["model"], "/readyz",
                common | {"SERVE_PREDICTION_LOG": log, "SERVE_RELOAD_INTERVAL_S": "1",
                          "SERVE_FEEDBACK_TOKEN": FEEDBACK,
                          "SERVE_CACHE_DIR": str(tmp_path / "cache")}),
        Process("drift", [python, "-m", "services.drift", "--port", str(ports["drift"])],
                ports["drift"], "/readyz",
                common | {"DRIFT_PREDICTION_LOG": log, "DRIFT_MODELS": '["titanic"]',
                          "DRIFT_SCHEDULE_S": "0", "DRIFT_STATE_DIR": str(tmp_path / "drift"),
                          "DRIFT_RETRAIN": "off", "DRIFT_ADMIN_TOKEN_FILE": str(admin),
                          "DRIFT_WEBHOOK_TOKEN_FILE": str(webhook),
                          "DRIFT_CANARY_STEPS": json.dumps(STEPS), "DRIFT_CANARY_STEP_S": "8",
                          "DRIFT_CANARY_TICK_S": "1", "DRIFT_CANARY_RECORDS": "60",
                          "DRIFT_CANARY_MIN_RECORDS": "30",
                          # the machine is shared: the test judges outcomes, not its load
                          "DRIFT_CANARY_LATENCY_P99_S": "5",
                          "DRIFT_PROMETHEUS_URL": f"http://127.0.0.1:{ports['prometheus']}"}),
        Process("prometheus", [shutil.which("prometheus") or "prometheus",
                               f"--config.file={prometheus}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                ports["prometheus"], "/-/ready"),
        Process("alertmanager", [shutil.which("prometheus-alertmanager") or "alertmanager",
                                 f"--config.file={alertmanager}",
                                 f"--storage.path={tmp_path / 'alertmanager'}",
                                 f"--web.listen-address=127.0.0.1:{ports['am']}",
                                 "--cluster.listen-address="],
                ports["am"], "/-/ready"),
    ]  # fmt: skip
    with started(processes, tmp_path / "logs", lambda _: None) as urls:
        yield Rollout(urls, headers, own, hook_token)


def traffic(rollout: Rollout, step: int, flip_challenger: bool) -> dict[str, int]:
    """40 units' requests of 5 held-out records, and their outcomes sent back (the opposite
    ones for what the challenger answered, when `flip_challenger`): records per alias."""
    spec = CATALOG["titanic"]
    frame = held_out(rollout.registry.trained, "titanic", 200)
    truth = spec.task_kind.true_outcomes(frame, spec)
    records = as_records(frame, spec)
    names = spec.task_kind.class_names(spec)
    served = {"champion": 0, "challenger": 0}
    credential = {"Authorization": f"Bearer {FEEDBACK}"}
    for unit in range(40):
        rows = slice(unit * 5, unit * 5 + 5)
        answer = httpx.post(
            rollout.urls["model"] + "/predict", json={"records": records[rows]},
            headers={"X-Unit-ID": f"user-{step}-{unit}"}, timeout=30,
        ).json()  # fmt: skip
        alias = answer["alias"]
        served[alias] += 5
        outcomes = truth[rows]
        if flip_challenger and alias == "challenger":
            outcomes = [names[1 - names.index(o)] for o in outcomes]
        sent = [{"request_id": answer["request_id"], "position": i, "outcome": o}
                for i, o in enumerate(outcomes)]  # fmt: skip
        stored = httpx.post(rollout.urls["model"] + "/feedback", json={"outcomes": sent},
                            headers=credential, timeout=30)  # fmt: skip
        assert stored.status_code == 200, stored.text
    return served


def wait(rollout: Rollout, until: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        canary: dict[str, Any] = rollout.drift("GET", "/models/titanic/canary")
        if until(canary):
            return canary
        time.sleep(1)
    raise AssertionError(f"no {what} in {TIMEOUT_S} s")


def registry_state(rollout: Rollout) -> tuple[dict[str, str], dict[str, str]]:
    model = rollout.registry.client().get_registered_model("titanic")
    return dict(model.aliases), dict(model.tags)


def served_versions(rollout: Rollout, units: int = 20) -> set[str]:
    records = as_records(held_out(rollout.registry.trained, "titanic", 1), CATALOG["titanic"])
    return {
        httpx.post(rollout.urls["model"] + "/predict", json={"records": records},
                   headers={"X-Unit-ID": f"after-{u}"}, timeout=30).json()["version"]
        for u in range(units)
    }  # fmt: skip


def test_a_canary_that_holds_ramps_up_and_is_promoted(rollout: Rollout) -> None:
    started_ = rollout.drift("POST", "/models/titanic/canary")
    assert (started_["champion"], started_["challenger"], started_["share"]) == ("1", "2", 0.3)
    # a retraining alert while it runs starts nothing: a new version would pull the rug
    firing = {"status": "firing", "labels": {"alertname": "ModelPerformanceDegraded",
                                             "model": "titanic", "action": "retrain"}}  # fmt: skip
    hook = {"Authorization": f"Bearer {rollout.webhook}"}
    held = httpx.post(rollout.urls["drift"] + "/alerts", json={"alerts": [firing]}, headers=hook)
    assert held.status_code == 202 and held.json()["retraining"] == [], held.text
    events = rollout.drift("GET", "/events")
    assert any("no retraining while the canary of v2" in e["text"] for e in events)
    shares = []
    for step in range(len(STEPS)):
        time.sleep(2)  # the service follows the registry's share (it polls every second)
        served = traffic(rollout, step, flip_challenger=False)
        shares.append(served["challenger"] / sum(served.values()))
        canary = wait(rollout, lambda c, s=step: c["step"] > s or c["state"] in FINAL,
                      f"a decision on step {step}")  # fmt: skip
    assert canary["state"] == "promoted", canary["reason"]
    assert shares[0] < shares[1]  # the ramp: more units on the challenger at each step
    look = canary["looks"][-1]["checks"]
    assert look["outcomes"]["comparison"]["metric"] == "roc_auc"
    assert look["errors"]["verdict"] == "fine" and "0.00%" in look["errors"]["text"]
    aliases, tags = registry_state(rollout)
    assert aliases == {"champion": 2} and tags["experiment.mode"] == "off"
    time.sleep(2)
    assert served_versions(rollout) == {"2"}


def test_a_worse_challenger_is_rolled_back_and_alerts(rollout: Rollout) -> None:
    rollout.drift("POST", "/models/titanic/canary")
    time.sleep(2)
    served = traffic(rollout, 0, flip_challenger=True)
    assert served["challenger"] >= 30
    canary = wait(rollout, lambda c: c["state"] in FINAL, "a rollback")
    assert canary["state"] == "rolled_back", canary
    outcome = canary["looks"][-1]["checks"]["outcomes"]
    assert outcome["verdict"] == "worse" and outcome["comparison"]["high"] < 0
    assert "roc_auc" in canary["reason"]
    aliases, tags = registry_state(rollout)
    assert aliases == {"champion": 1} and tags["experiment.share"] == "0"
    version = rollout.registry.client().get_model_version("titanic", "2")
    assert version.tags["canary"].startswith("rolled back: roc_auc")
    time.sleep(2)
    assert served_versions(rollout) == {"1"}
    # Prometheus fires CanaryRolledBack; Alertmanager hands it to the drift service's log
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events = rollout.drift("GET", "/events")
        if any("CanaryRolledBack firing" in e["text"] for e in events):
            break
        time.sleep(1)
    else:
        alerts = httpx.get(rollout.urls["prometheus"] + "/api/v1/alerts").json()
        raise AssertionError(f"CanaryRolledBack never reached the drift service: {alerts}")
    gauges = httpx.get(rollout.urls["drift"] + "/metrics").text
    assert 'canary_decisions_total{decision="rolled_back",model="titanic"} 1.0' in gauges
