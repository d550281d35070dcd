"""infra/grafana: provisioning and dashboards, every query parsed by promtool, every metric real."""

import ast
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from contract.paths import ROOT
from tests.conftest import KEYS

GRAFANA = ROOT / "infra" / "grafana"
PANEL_TYPES = {"timeseries", "stat", "table", "heatmap", "bargauge"}
# What tritonserver 2.51 (PyTriton's) exports on a host without a GPU: curl :8002/metrics
TRITON = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_pinned_memory_pool_total_bytes",
    "nv_pinned_memory_pool_used_bytes",
    "nv_cpu_utilization",
    "nv_cpu_memory_total_bytes",
    "nv_cpu_memory_used_bytes",
}
PROMETHEUS_OWN = {"up", "ALERTS"}  # written by Prometheus itself
# The series prometheus_client exports for each instrument
SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("", "_sum", "_count"),
}


def load_panels() -> ModuleType:
    """infra/grafana/panels.py, imported from its path (infra/ is not a package)."""
    spec = importlib.util.spec_from_file_location("grafana_panels", GRAFANA / "panels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


panels = load_panels()
BOARDS: list[dict[str, Any]] = panels.dashboards()
VALUES = {"model": KEYS[0]}


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def visible(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels that draw something (rows only hold them)."""
    return [p for p in panels.panels(board) if p["type"] != "row"]


def instruments() -> set[str]:
    """Every series the Counter / Gauge / Histogram calls in services/ export, read from source."""
    names = set()
    for path in (ROOT / "services").rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in SUFFIXES
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                base = node.args[0].value.removesuffix("_total")
                names |= {base + suffix for suffix in SUFFIXES[node.func.id]}
    return names


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in (ROOT / "infra" / "prometheus" / "rules").glob("*.yml")
        for group in yaml_file(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def test_dashboards_parse_with_unique_uids() -> None:
    assert {b["uid"] for b in BOARDS} == {
        "mlops-service-overview",
        "mlops-model",
        "mlops-feature-store",
        "mlops-triton",
    }
    for board in BOARDS:
        assert board["schemaVersion"] >= 39, board["uid"]
        assert board.get("id") is None, "provisioned dashboards carry no database id"
        ids = [p["id"] for p in panels.panels(board)]
        assert len(ids) == len(set(ids)), f"{board['uid']}: duplicate panel ids"


def test_every_panel_reads_the_provisioned_datasource() -> None:
    provisioned = yaml_file(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = provisioned["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    assert expected == {"type": "prometheus", "uid": "prometheus"}
    for board in BOARDS:
        for panel in visible(board):
            where = f"{board['uid']}: {panel['title']}"
            assert panel["datasource"] == expected, where
            assert panel["targets"], where
            assert all(t["datasource"] == expected for t in panel["targets"]), where
        for variable in board["templating"]["list"]:
            assert variable["datasource"] == expected, variable["name"]


def test_every_panel_is_described_with_a_unit() -> None:
    for board in BOARDS:
        titles = [p["title"] for p in visible(board)]
        assert len(titles) == len(set(titles)), f"{board['uid']}: panel titles repeat"
        for panel in visible(board):
            where = f"{board['uid']}: {panel['title']}"
            assert panel["type"] in PANEL_TYPES, where
            assert panel.get("description", "").strip(), where
            assert panel["fieldConfig"]["defaults"].get("unit"), where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), where


def test_every_target_has_an_expr_with_known_variables() -> None:
    for board in BOARDS:
        defined = {v["name"]: KEYS[0] for v in board["templating"]["list"]}
        for target in panels.targets([board]):
            assert target.expr.strip(), target
            panels.expand(target.expr, defined)  # raises on a variable the board lacks


def test_every_expr_parses(tmp_path: Path) -> None:
    """promtool parses each expanded expr, as the expr of a recording rule."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make setup` installs Debian's prometheus package")
    targets = list(panels.targets(BOARDS))
    rules = [
        {"record": f"grafana:target_{i}", "expr": panels.expand(t.expr, VALUES)}
        for i, t in enumerate(targets)
    ]
    (tmp_path / "targets.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]})
    )
    result = subprocess.run(
        [tool, "check", "rules", str(tmp_path / "targets.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failed = {int(i) for i in re.findall(r"grafana:target_(\d+)", result.stdout + result.stderr)}
    assert result.returncode == 0, [targets[i] for i in sorted(failed)] or result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_metric_is_exported_or_recorded() -> None:
    known = instruments() | recorded() | TRITON | PROMETHEUS_OWN
    unknown = {
        (target.dashboard, target.panel, name)
        for target in panels.targets(BOARDS)
        for name in panels.metric_names(panels.expand(target.expr, VALUES))
        if name not in known
    }
    assert not unknown


def test_the_known_names_are_read_from_the_sources() -> None:
    """The name check is only as good as these sets: they hold what they should."""
    exported = instruments()
    assert {"serving_requests_total", "serving_model_info"} <= exported
    assert {"serving_request_duration_seconds_bucket", "serving_batch_size_count"} <= exported
    assert "serving_requests" not in exported and "serving_model_info_total" not in exported
    assert {"model:serving_requests:rate5m", "model_code:serving_requests:rate5m"} <= recorded()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(a_total{code=~"5.."}[5m])) or vector(0)', {"a_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(b_bucket[1m]))) > bool 1e-3", {"b_bucket"}),
        ("time() - (c > 0) and on (model, version) (d == 1)", {"c", "d"}),
        ('label_replace(up, "dst", "$1", "src", "(.*)") / ignoring (x) group_left e', {"up", "e"}),
        ("max_over_time(model:f:rate5m[5m:1m] offset 5m) + Inf", {"model:f:rate5m"}),
    ],
)
def test_metric_names_of_an_expr(expr: str, names: set[str]) -> None:
    assert panels.metric_names(expr) == names


def test_expand_replaces_every_variable_form() -> None:
    expr = 'rate(x{a="$model", b="${model}", c="[[model]]", d="${model:regex}"}[$__rate_interval])'
    assert panels.expand(expr, {"model": "t"}) == 'rate(x{a="t", b="t", c="t", d="t"}[1m])'
    with pytest.raises(ValueError, match=r"\$nope"):
        panels.expand("x{a='$nope'}", {})


def test_model_dashboard_has_the_model_variable() -> None:
    (board,) = [b for b in BOARDS if b["uid"] == "mlops-model"]
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "model"]
    assert variable["type"] == "query" and not variable["multi"]
    assert variable["query"]["query"] == "label_values(serving_model_info, model)"
    assert variable["definition"] == variable["query"]["query"]


def test_provisioning_points_at_the_dashboards_folder() -> None:
    provisioned = yaml_file(GRAFANA / "provisioning" / "dashboards" / "dashboards.yml")
    (provider,) = provisioned["providers"]
    assert provider["type"] == "file" and provider["folder"] == "MLOps"
    readme = (GRAFANA / "README.md").read_text()
    mounted = re.findall(r"\./infra/grafana/dashboards:(\S+?)(?::ro)?$", readme, re.M)
    assert mounted == [provider["options"]["path"]]
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^\s+url: \$\{PROMETHEUS_URL\}", datasource, re.M)
