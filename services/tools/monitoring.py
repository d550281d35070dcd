"""infra/'s Prometheus and Alertmanager configs, on the ports a local run actually uses.

The files in infra/ name the local stack's default ports (model services from 8101, PyTriton
8000-8002, the drift service 8200, Alertmanager 9093). A stack on other ports (tests, the
drift demo) gets the same configs with its ports put in; targets it does not run are left
out. `fast=True` (the drift demo only) shortens every wait: 1 s scrapes and evaluations,
5 s `for:`, 1 s group wait; the real values wait minutes on purpose.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from contract.catalog import load_catalog
from contract.paths import ROOT

INFRA = ROOT / "infra"
MODEL_BASE_PORT, DRIFT_PORT, ALERTMANAGER_PORT = 8101, 8200, 9093
TRITON_METRICS_PORT = 8002


def model_port(key: str) -> int:
    """The model's port in the local stack and in infra/prometheus (catalog order)."""
    return MODEL_BASE_PORT + list(load_catalog()).index(key)


def _host_port(target: str) -> tuple[str, int]:
    host, port = target.rsplit(":", 1)
    return host, int(port)


def _address(host: str, port: int, ports: Mapping[int, int | str]) -> str:
    """`ports[port]`: a port on the same host, or a whole "host:port" (compose, k8s)."""
    to = ports.get(port, port)
    return to if isinstance(to, str) else f"{host}:{to}"


def prometheus_config(
    ports: Mapping[int, int | str], rules: Path, fast: bool = False, text: str | None = None
) -> dict[str, Any]:
    """infra/prometheus/prometheus.yml (or its `text` as about to be written) with each
    default port mapped to `ports[port]` (a port, or a "host:port"); targets whose port
    `ports` lacks are left out."""
    source = text if text is not None else (INFRA / "prometheus" / "prometheus.yml").read_text()
    config: dict[str, Any] = yaml.safe_load(source)
    config["rule_files"] = [str(rules / "*.yml")]
    if fast:
        config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [
                _address(host, port, ports)
                for host, port in map(_host_port, group["targets"])
                if port in ports
            ]
        job["static_configs"] = [g for g in job["static_configs"] if g["targets"]]
    config["scrape_configs"] = [j for j in config["scrape_configs"] if j["static_configs"]]
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]
    am["targets"] = [_address(h, p, ports) for h, p in map(_host_port, am["targets"])]
    return config


def rules(target: Path, fast: bool = False) -> Path:
    """infra/prometheus/rules/*.yml copied to `target` (shortened waits when fast)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((INFRA / "prometheus" / "rules").glob("*.yml")):
        groups = yaml.safe_load(source.read_text())
        for group in groups["groups"] if fast else []:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "5s"
        (target / source.name).write_text(yaml.safe_dump(groups, sort_keys=False))
    return target


def alertmanager_config(
    drift: int | str, webhook_token: Path | str, fast: bool = False
) -> dict[str, Any]:
    """infra/alertmanager/alertmanager.yml with its webhooks on the drift service (a local
    port, or a "host:port" in compose and k8s), authenticated with the bearer token in the
    file `webhook_token` (the drift service's DRIFT_WEBHOOK_TOKEN)."""
    text = (INFRA / "alertmanager" / "alertmanager.yml").read_text()
    address = drift if isinstance(drift, str) else f"127.0.0.1:{drift}"
    config: dict[str, Any] = yaml.safe_load(text.replace(f"127.0.0.1:{DRIFT_PORT}", address))
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["http_config"]["authorization"]["credentials_file"] = str(webhook_token)
    if fast:
        config["route"]["group_wait"] = "1s"
    return config


def write(
    folder: Path,
    ports: Mapping[int, int | str],
    drift_port: int,
    webhook_token: Path,
    fast: bool = False,
) -> tuple[Path, Path]:
    """(prometheus.yml, alertmanager.yml) in `folder`, with the rules beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    prometheus = folder / "prometheus.yml"
    config = prometheus_config(ports, rules(folder / "rules", fast), fast)
    prometheus.write_text(yaml.safe_dump(config, sort_keys=False))
    alertmanager = folder / "alertmanager.yml"
    am = alertmanager_config(drift_port, webhook_token, fast)
    alertmanager.write_text(yaml.safe_dump(am, sort_keys=False))
    return prometheus, alertmanager
