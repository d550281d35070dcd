"""Every Grafana panel returns data from a real Prometheus scraping the real local stack.

The stack (a service per model, each with a shadow challenger, and PyTriton) and Prometheus
(infra/prometheus/prometheus.yml with the targets moved to the test ports, 1 s scrapes, the
real rule files) run on free ports. Traffic of every kind the dashboards show is sent; then
every target of every dashboard is queried for every value its `model` variable offers.
"""

import base64
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from contract.catalog import InputField
from contract.feeds import one_at_a_time, onnx_feeds
from contract.paths import ROOT, onnx_model, split_dir
from pipelines import triton
from services.api.inputs import records_limit
from services.tools import monitoring
from services.tools.examples import as_entities, as_records, client_tokenizer, to_png
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import (
    Registry,
    free_block,
    free_port,
    held_out,
    inherited_environment,
)
from tests.unit.test_grafana import load_panels

pytestmark = pytest.mark.slow

PROMETHEUS = ROOT / "infra" / "prometheus"
FEAST_KEYS = sorted(k for k in KEYS if CATALOG[k].features is not None)
TRITON_KEYS = sorted(k for k in KEYS if CATALOG[k].triton is not None)
# Triton's models: the graphs, and the BLS models that take a task's pictures (<key>_image)
BLS_KEYS = [k for k in TRITON_KEYS if (triton.BLS_TEMPLATES / CATALOG[k].task).is_dir()]
TRITON_MODELS = sorted(TRITON_KEYS + [k + triton.BLS_SUFFIX for k in BLS_KEYS])
LABELLED_KEYS = sorted(k for k in KEYS if CATALOG[k].task_kind.outcome(CATALOG[k]) is not None)
# What a dashboard's `model` variable must offer once every model has had traffic
OFFERED = {
    "mlops-service-overview": KEYS,
    "mlops-model": KEYS,
    "mlops-feature-store": FEAST_KEYS,
    "mlops-triton": TRITON_MODELS,
}
RULES_TIMEOUT_S = 120
FEEDBACK_BATCH = 20  # records a feedback request predicts: a tenth of the 200 sent back

panels = load_panels()


class Ports:
    """The test stack's ports, and where each target of the Prometheus config moves to."""

    def __init__(self) -> None:
        self.base = free_block()  # beside a stack a developer may run, below the ephemeral ports
        self.triton = self.base + 100  # HTTP, gRPC, metrics
        self.drift = self.base + 200  # the stack's Prometheus and Alertmanager: +201, +202
        self.run_dir = Path()  # the stack's STACK_RUN_DIR, once up

    def admin_token(self) -> str:
        """The drift service's token, which the stack made on its first start."""
        return (self.run_dir / "secrets" / "admin-token").read_text().strip()

    def feedback_token(self) -> str:
        """The model services' POST /feedback token, made likewise."""
        return (self.run_dir / "secrets" / "feedback-token").read_text().strip()

    def service(self, key: str) -> str:
        return f"http://127.0.0.1:{self.base + list(CATALOG).index(key)}"

    def mapped(self) -> dict[int, int]:
        """infra/prometheus's default ports -> this stack's (tools.monitoring moves them)."""
        models = {monitoring.model_port(k): self.base + i for i, k in enumerate(CATALOG)}
        triton = {monitoring.TRITON_METRICS_PORT: self.triton + 2}
        return models | triton | {monitoring.DRIFT_PORT: self.drift}


def prometheus_config(ports: Ports) -> dict[str, Any]:
    """prometheus.yml as the test runs it: test ports, 1 s scrapes, the real rules."""
    config = monitoring.prometheus_config(ports.mapped(), PROMETHEUS / "rules", fast=True)
    config.pop("alerting", None)  # no Alertmanager here: alerts still show in ALERTS
    return config


@pytest.fixture(scope="module")
def registry(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Every model as v1 @champion and v2 @challenger (same artifact), for shadow mode."""
    store = Registry(tmp_path_factory.mktemp("registry"), trained)
    for key in KEYS:
        store.copy_version(key, "challenger")
    return store


def stack(command: str, env: dict[str, str], root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.tools.stack", command, "--root", str(root)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=660,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def ports(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    """The local stack, up on test ports; every model scores its challenger in shadow."""
    folder, ports = tmp_path_factory.mktemp("stack"), Ports()
    env = inherited_environment() | {
        "MLFLOW_TRACKING_URI": registry.uri,
        "SERVE_CACHE_DIR": str(folder / "cache"),
        "SERVE_CHALLENGER_MODE": "shadow",
        "SERVE_PREDICTION_LOG": f"sqlite:///{folder / 'predictions.sqlite'}",
        "STACK_RUN_DIR": str(folder / "run"),
        "STACK_READY_TIMEOUT_S": "600",  # 20 processes importing at once on 2 cores
        "STACK_BASE_PORT": str(ports.base),
        "STACK_TRITON_PORT": str(ports.triton),
        "STACK_DRIFT_PORT": str(ports.drift),
        "STACK_PROMETHEUS_PORT": str(ports.drift + 1),
        "STACK_ALERTMANAGER_PORT": str(ports.drift + 2),
        "STACK_PROXY_PORT": str(ports.drift + 3),
        "STACK_FEAST_PORT": str(ports.drift + 4),
        "DRIFT_MIN_ROWS": "10",  # a few rounds of test traffic make a window
        "DRIFT_PERFORMANCE_MIN_RECORDS": "5",  # and a few outcomes a labelled one
    }
    ports.run_dir = folder / "run"
    try:
        stack("up", env, registry.trained)
        yield ports
    finally:
        stack("down", env, registry.trained)


@pytest.fixture(scope="module")
def prometheus(ports: Ports, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's prometheus on a free port, scraping the test stack."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make setup` installs Debian's prometheus package")
    folder, port = tmp_path_factory.mktemp("prometheus"), free_port()
    (folder / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(ports)))
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder}/data",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: ready(url), 60, lambda: (folder / "prometheus.log").read_text())
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition: Any, timeout: float, why: Any) -> float:
    """Seconds until condition() held; AssertionError with why() after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not after {timeout}s: {why()}")
        time.sleep(1)
    return time.monotonic() - start


def post(url: str, body: Any, status: int) -> httpx.Response:
    response = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert response.status_code == status, response.text[:500]
    return response


def send_feedback(key: str, url: str, trained: Path, token: str) -> None:
    """Records predicted, then their held-out targets sent back as outcomes (enough rows
    that every class shows: a ranking metric needs both)."""
    spec = CATALOG[key]
    frame = pd.read_parquet(split_dir(key, trained) / "test.parquet").head(200)
    outcomes = spec.task_kind.true_outcomes(frame, spec)
    if not outcomes:  # a task with no ground truth (segments)
        return
    # a recording is a second or two of a core: one a request keeps each far inside the
    # service's 10 s timeout on a loaded machine (three timed out beside the image builds);
    # other records FEEDBACK_BATCH a request: the search's 200 queries through its encoder,
    # champion and shadow challenger, took over 10 s on a 2-core AVX2-only EPYC (a 504)
    audio = any(f.type == "audio" for f in spec.fields.values())
    step = 1 if audio else records_limit(spec, min(len(frame), FEEDBACK_BATCH))
    sent: list[dict[str, Any]] = []
    for start in range(0, len(frame), step):
        answer = post(url, {"records": as_records(frame[start : start + step], spec)}, 200)
        sent += [
            {"request_id": answer.json()["request_id"], "position": i, "outcome": outcome}
            for i, outcome in enumerate(outcomes[start : start + step])
        ]
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(f"{url}/feedback", json={"outcomes": sent}, headers=headers, timeout=60)
    assert response.status_code == 200, response.text[:500]


def send_traffic(key: str, url: str, trained: Path) -> None:
    """Records, a record refused by validation (200 for the rest), a 400; entity keys."""
    spec, frame = CATALOG[key], held_out(trained, key, rows=8)
    records = as_records(frame, spec)
    wrong = records[0] | {next(iter(spec.fields)): {"not": "a value"}}
    post(url, {"records": records}, 200)
    post(url, {"records": records[:1]}, 200)
    post(url, {"records": [records[1], wrong]}, 200)
    post(url, {"records": [wrong]}, 400)
    if spec.features is not None:  # known entities (found or stale), then an unknown one
        body = as_entities(frame, spec)
        post(url, body, 200)
        rows = body.get("entities") or body[f"{spec.features.entity}s"]
        if isinstance(rows[0], dict):
            rows[0] = rows[0] | {spec.features.entity: "nobody-1"}
        else:
            rows[0] = "nobody-1"
        post(url, body, 200)


def picture(value: bytes, field: InputField) -> bytes:
    """An encoded picture of a split's value: a photo as it is, an image's pixels as PNG."""
    if field.type == "photo":
        return value
    return base64.b64decode(to_png(np.frombuffer(value, np.uint8).reshape(field.shape or [])))


def send_triton(key: str, ports: Ports, trained: Path) -> None:
    """Batches of 1 and 4 over OIP v2 to PyTriton: a graph's tensors and encoded pictures to
    its BLS model (a photo model's graph only through it), or a transformer's tokens (a
    search's encoder, a fine-tuned classifier: its client tokenizes, with the tokenizer in
    the graph's metadata)."""
    import tritonclient.http as http
    from tritonclient.utils import np_to_triton_dtype

    from contract.tokens import encoder_inputs

    spec = CATALOG[key]
    frame = held_out(trained, key, rows=4)
    client = http.InferenceServerClient(f"127.0.0.1:{ports.triton}")
    tok = client_tokenizer(onnx_model(key, trained))
    if tok is not None:  # a search's encoder, a fine-tuned transformer
        texts = frame[next(iter(spec.fields))].tolist()
        first = client.get_model_metadata(key)["outputs"][0]["name"]
        for batch in (texts[:1], texts):
            inputs = []
            for name, array in encoder_inputs(tok, batch).items():
                tensor = http.InferInput(name, list(array.shape), "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            assert client.infer(key, inputs).as_numpy(first).shape[0] == len(batch)
        return
    if key in BLS_KEYS:  # encoded pictures, to the BLS model that decodes them
        name = next(iter(spec.fields))
        pictures = [picture(v, spec.fields[name]) for v in frame[name]]
        bls = key + triton.BLS_SUFFIX
        output = client.get_model_metadata(bls)["outputs"][0]["name"]
        for batch in (pictures[:1], pictures):
            tensor = http.InferInput("IMAGE", [len(batch), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[p] for p in batch], dtype=object))
            assert client.infer(bls, [tensor]).as_numpy(output).shape[0] == len(batch)
    if one_at_a_time(spec):  # the graph takes a picture at a time: the BLS model's calls
        return
    first = client.get_model_metadata(key)["outputs"][0]["name"]
    for rows in (frame.head(1), frame):
        inputs = []
        for name, array in onnx_feeds(rows, spec).items():
            tensor = http.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        assert client.infer(key, inputs).as_numpy(first).shape[0] == len(rows)


def models_with(url: str, expr: str) -> set[str]:
    return {s["metric"].get("model", "") for s in panels.api(url, "query", query=expr)["result"]}


# Performance panels of a model without ground truth (segments), and the comparison with
# registered values where no floor metric is measured live (a ranking's floors are rmse and
# a lift over popularity; a search's recall is against exact search, not relevance)
PERFORMANCE_PANELS = {
    "Metrics on labelled traffic",
    "Label coverage",
    "Label delay (median)",
    "Labelled records",
}
UNREGISTERED = {"movie_recs", "semantic_search"}


def expected_empty(result: Any, values: dict[str, str]) -> bool:
    """Empty by design: the predicted labels of a regression, a forecast (values only) or a
    search (ranked results); performance where no outcome or no floor metric applies."""
    spec = CATALOG.get(values.get("model", ""))
    if spec is None:
        return False
    panel = result.target.panel
    if panel == "Predicted label shares":
        return not spec.labels_served
    no_outcome = spec.task_kind.outcome(spec) is None
    if panel in PERFORMANCE_PANELS:
        return no_outcome
    return panel == "Live minus registered" and (no_outcome or spec.key in UNREGISTERED)


def rules_have_data(url: str) -> bool:
    """The recording rules (15 s groups) have seen two scrapes of every model's traffic, and
    Prometheus has scraped each model's drift run."""
    return (
        models_with(url, "model_version:serving_requests:rate5m") >= set(KEYS)
        and models_with(url, "model_outcome:serving_feature_lookups:rate5m") >= set(FEAST_KEYS)
        # a drift run per model scraped (NaN, before a run, is not >= 0), and its gauges too
        and models_with(url, "model:drift_run_duration_seconds:p95_1h >= 0") >= set(KEYS)
        and models_with(url, "drift_share_drifted_features") >= set(KEYS)
        and models_with(url, "model_performance") >= set(LABELLED_KEYS)
    )


Checked = tuple[dict[str, str], Any]  # (variable values, panels.Result)


def check_every_board(url: str) -> tuple[int, list[Checked], list[Checked]]:
    """(targets queried, problems, empty by design) for every dashboard and $model value."""
    checked = 0
    problems: list[Checked] = []
    empty: list[Checked] = []
    for board in panels.dashboards():
        offered = panels.variable_values(url, board)
        assert offered.get("model") == OFFERED[board["uid"]], board["uid"]
        for values in panels.assignments(offered, {}):
            for result in panels.run(url, values, [board]):
                checked += 1
                if not result.ok:
                    (empty if expected_empty(result, values) else problems).append((values, result))
    return checked, problems, empty


@pytest.fixture(scope="module")
def traffic(prometheus: str, ports: Ports, registry: Registry) -> dict[str, float]:
    """Every kind of request, until the recording rules have it: the seconds each step took."""
    start = time.monotonic()
    for _ in range(3):  # a few rounds, so that rates see the counters move
        for key in KEYS:
            send_traffic(key, ports.service(key), registry.trained)
        for key in TRITON_KEYS:
            send_triton(key, ports, registry.trained)
        time.sleep(2)
    for key in LABELLED_KEYS:
        send_feedback(key, ports.service(key), registry.trained, ports.feedback_token())
    admin = {"Authorization": f"Bearer {ports.admin_token()}"}
    for key in KEYS:  # a drift run per model on what was logged (the schedule's is 300 s)
        response = httpx.post(
            f"http://127.0.0.1:{ports.drift}/models/{key}/run", headers=admin, timeout=120
        )
        assert response.status_code == 200, response.text[:500]
    for key in LABELLED_KEYS:  # and its performance on the outcomes sent back
        response = httpx.post(
            f"http://127.0.0.1:{ports.drift}/models/{key}/performance/run",
            headers=admin, timeout=120,
        )  # fmt: skip
        assert response.status_code == 200, response.text[:500]
        assert response.json()["versions"][0]["metrics"], response.text[:500]
    sent = time.monotonic() - start
    recorded = wait_for(
        lambda: rules_have_data(prometheus),
        RULES_TIMEOUT_S,
        lambda: models_with(prometheus, "model_version:serving_requests:rate5m"),
    )
    return {"traffic": sent, "rules": recorded}


def test_every_panel_returns_data(prometheus: str, traffic: dict[str, float]) -> None:
    start = time.monotonic()
    checked, problems, empty = check_every_board(prometheus)
    print(
        f"\n{checked} panel queries checked in {time.monotonic() - start:.1f} s "
        f"(traffic {traffic['traffic']:.1f} s, recording rules after {traffic['rules']:.1f} s); "
        f"{len(empty)} empty by design: {sorted({r.target.panel for _, r in empty})}"
    )
    assert not problems, "\n".join(
        f"{r.target.dashboard} / {r.target.panel} / {r.target.ref_id} {v}: {panels.describe(r)}"
        f"\n    {r.query}"
        for v, r in problems
    )


def test_the_command_line_prints_a_table(prometheus: str, traffic: dict[str, float]) -> None:
    """`python infra/grafana/panels.py`: a line per target; exit 1 when one has no data."""
    uid, script = "mlops-service-overview", "infra/grafana/panels.py"
    base = [sys.executable, script, "--prometheus", prometheus, "--dashboard", uid]
    command = [*base, "--var", "model=titanic"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    board = [b for b in panels.dashboards() if b["uid"] == uid]
    assert run.stdout.count(" ok   ") == len(list(panels.targets(board)))
    assert run.stdout.endswith("\n0 problem(s)\n")
    # A rate window too short to hold two scrapes: no series, so those targets fail
    short = [*command, "--var", "__rate_interval=1ms"]
    run = subprocess.run(short, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and " FAIL no series" in run.stdout
    # A value the dashboard's variable does not offer: skipped, as Grafana would not show it
    other = [*base, "--var", "model=nobody"]
    run = subprocess.run(other, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and f"{uid} " in run.stdout and "skipped" in run.stdout
