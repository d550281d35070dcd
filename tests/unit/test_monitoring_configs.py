"""infra/'s configs on other ports (tests, the drift demo): still valid, nothing else changed."""

from pathlib import Path

import pytest
import yaml

from services.tools import monitoring
from tests.unit.test_alertmanager import amtool
from tests.unit.test_prometheus import promtool


@pytest.mark.parametrize("fast", [False, True], ids=["stack", "demo"])
def test_configs_on_other_ports_pass_promtool_and_amtool(tmp_path: Path, fast: bool) -> None:
    titanic = monitoring.model_port("titanic")
    ports = {titanic: 18102, monitoring.DRIFT_PORT: 18200, monitoring.ALERTMANAGER_PORT: 19093}
    token = tmp_path / "secrets" / "webhook-token"
    prometheus, alertmanager = monitoring.write(tmp_path, ports, 18200, token, fast)
    checked = promtool("check", "config", str(prometheus))  # its rule files too
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = amtool("check-config", str(alertmanager))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(prometheus.read_text())
    targets = {
        job["job_name"]: [t for g in job["static_configs"] for t in g["targets"]]
        for job in config["scrape_configs"]
    }
    # only what runs is scraped: no ModelServiceDown for the services a demo does not start
    assert targets == {"model-services": ["127.0.0.1:18102"], "drift": ["127.0.0.1:18200"]}
    hooks = [
        hook
        for receiver in yaml.safe_load(alertmanager.read_text())["receivers"]
        for hook in receiver.get("webhook_configs", [])
    ]
    assert {hook["url"] for hook in hooks} == {
        "http://127.0.0.1:18200/alerts",
        "http://127.0.0.1:18200/alerts/log",
    }
    # every webhook authenticates to the drift service with the token in the stack's file
    assert {str(hook["http_config"]["authorization"]["credentials_file"]) for hook in hooks} == {
        str(token)
    }
    rules = yaml.safe_load((tmp_path / "rules" / "monitoring.yml").read_text())
    waits = {r["for"] for g in rules["groups"] for r in g["rules"] if "for" in r}
    assert (waits == {"5s"}) == fast
