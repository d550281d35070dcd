"""The local stack as `make serve` runs it: up, one prediction per model, the proxy's routes,
`make load`'s headless Locust run with its SLO thresholds, status, down."""

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from contract import paths
from contract.paths import ROOT
from services.tools.examples import as_entities
from services.tools.load.capacity import Step, objectives, overload_bounds
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import Registry, as_records, free_block, inherited_environment
from tests.serving.test_hostile import (
    binary_cases,
    check,
    predict_cases,
    tensor_cases,
    valid_inputs,
)

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    env: dict[str, str]
    root: Path
    base: int  # the first model's port; the others follow it

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.env['STACK_PROXY_PORT']}"

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.tools.stack", command, "--root", str(self.root)],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=660,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, subprocess.CompletedProcess[str]]]:
    """The stack up on the reduced-params registry, on ports beside a developer's own."""
    folder = tmp_path_factory.mktemp("stack")
    base = free_block()
    env = inherited_environment() | {
        "MLFLOW_TRACKING_URI": registry.uri,
        "SERVE_CACHE_DIR": str(folder / "cache"),
        "STACK_RUN_DIR": str(folder / "run"),
        "STACK_READY_TIMEOUT_S": "600",  # 20 processes importing at once on 2 cores
        "STACK_BASE_PORT": str(base),
        "STACK_TRITON_PORT": str(base + 100),
        "STACK_DRIFT_PORT": str(base + 200),
        "STACK_PROMETHEUS_PORT": str(base + 201),
        "STACK_ALERTMANAGER_PORT": str(base + 202),
        "STACK_PROXY_PORT": str(base + 203),
        "STACK_FEAST_PORT": str(base + 204),
    }
    running = Stack(env, registry.trained, base)
    try:
        yield running, running.run("up")
    finally:
        running.run("down")


def test_stack_serves_every_model(stack: tuple[Stack, subprocess.CompletedProcess[str]]) -> None:
    running, up = stack
    assert up.returncode == 0, up.stdout + up.stderr
    for key in KEYS:
        assert f"ready  {key}" in up.stdout
    for process in ("triton", "drift", "feast", "prometheus", "alertmanager", "proxy"):
        assert f"ready  {process}" in up.stdout
    # the stack's Prometheus scrapes every model service and the drift service
    prometheus = f"http://127.0.0.1:{running.base + 201}"
    targets = httpx.get(f"{prometheus}/api/v1/targets").json()
    scraped = {t["labels"]["service"] for t in targets["data"]["activeTargets"]}
    assert scraped == {*KEYS, "triton", "drift"}
    demo = running.run("demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    # one answer per model, plus the entity-keyed one of each Feast-backed model
    feast = [k for k in KEYS if CATALOG[k].features]
    assert demo.stdout.count("\n  -> ") == len(KEYS) + len(feast)
    assert all(f"{CATALOG[k].features.service} of " in demo.stdout for k in feast)  # type: ignore[union-attr]
    assert "Triton (PyTriton)" in demo.stdout
    assert running.run("status").returncode == 0
    # the Feast feature server (compose's `feast`) answers from the stack's online store
    churn = CATALOG["churn"]
    frame = pd.read_parquet(paths.split_dir("churn", running.root) / "test.parquet").head(1)
    (entity,) = next(iter(as_entities(frame, churn).values()))
    assert churn.features is not None
    features = httpx.post(
        f"http://127.0.0.1:{running.env['STACK_FEAST_PORT']}/get-online-features",
        json={
            "feature_service": churn.features.service,
            "entities": {churn.features.entity: [entity]},
        },
        timeout=30,
    )
    assert features.status_code == 200, features.text
    body = features.json()
    names = body["metadata"]["feature_names"]
    assert body["results"][names.index(churn.features.entity)]["values"] == [entity]
    assert sum("PRESENT" in column["statuses"] for column in body["results"]) > 1


def test_the_proxy_routes_every_model_and_names_unknown_ones(
    stack: tuple[Stack, subprocess.CompletedProcess[str]],
) -> None:
    running, _ = stack
    with httpx.Client(base_url=running.proxy, timeout=30) as client:
        for key in KEYS:
            frame = pd.read_parquet(paths.split_dir(key, running.root) / "test.parquet").head(2)
            records = as_records(frame, CATALOG[key])
            answer = client.post(
                f"/models/{key}/predict", json={"records": records}, headers={"X-Request-ID": key}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == key and len(answer.json()["predictions"]) == 2
            assert answer.headers["x-request-id"] == key  # the client's id, end to end
            docs = client.get(f"/models/{key}/docs")  # its links point back through the proxy
            assert docs.status_code == 200 and f"/models/{key}/openapi.json" in docs.text
            assert client.get(f"/models/{key}/openapi.json").status_code == 200
            bad = client.post(f"/models/{key}/predict", content=b'{"records": 1}')
            assert bad.status_code == 400 and "records" in bad.text  # the service's own 400
        unknown = client.post("/models/nope/predict", json={"records": []})
        assert unknown.status_code == 404
        assert all(key in unknown.json()["detail"] for key in KEYS)
        assert client.get("/healthz").json() == {"status": "ok"}


def test_the_proxy_publishes_no_admin_route_and_the_drift_pages_need_the_token(
    stack: tuple[Stack, subprocess.CompletedProcess[str]],
) -> None:
    running, _ = stack
    token = (Path(running.env["STACK_RUN_DIR"]) / "secrets" / "admin-token").read_text().strip()
    admin = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=running.proxy, timeout=30) as client:
        hidden = [
            ("/models/titanic/admin/reload", None),
            ("/models/titanic/%61dmin/reload", None),
            ("/models//titanic/admin/reload", None),
            ("/drift/models/titanic/run", None),
            ("/drift/models/titanic/retrain", None),
            ("/drift/alerts", {"alerts": []}),
            ("/drift/alerts/log", {"alerts": []}),
        ]
        for path, body in hidden:  # not even with the right credential
            answer = client.post(path, json=body, headers=admin)
            assert answer.status_code == 404 and "not published" in answer.text, path
        assert client.get("/drift/models").status_code == 401
        assert client.get("/drift/models", headers=admin).status_code == 200
        # a 60 MB body stops at the proxy, declared or chunked, in JSON
        chunks = (b"x" * 2**20 for _ in range(60))
        for body in (b"x" * (60 * 2**20), chunks):
            big = client.post("/models/titanic/predict", content=body)
            assert big.status_code == 413 and "17 MiB" in big.json()["detail"]
        # and behind the proxy, the services themselves still take it
        titanic = f"http://127.0.0.1:{running.base + list(CATALOG).index('titanic')}"
        direct = httpx.post(f"{titanic}/admin/reload", headers=admin, timeout=60)
        assert direct.status_code == 200, direct.text


def test_the_hostile_corpus_through_the_proxy_gets_4xx_and_leaves_it_serving(
    stack: tuple[Stack, subprocess.CompletedProcess[str]], trained: Path
) -> None:
    """test_hostile.py's cheap corpus (/predict, OIP JSON and binary) sent through nginx: the
    proxy passes each refusal on (or makes its own JSON 4xx), never a 5xx, and still serves."""
    running, _ = stack
    for key in ("titanic", "fashion_cnn", "review_sentiment"):
        record, feeds = valid_inputs(trained, key)
        cases = [*predict_cases(key, record), *tensor_cases(key, feeds), *binary_cases(feeds)]
        valid = orjson.dumps({"records": [record]})
        with httpx.Client(base_url=f"{running.proxy}/models/{key}", timeout=60) as client:
            problems = [f"{c.name}: {p}" for c in cases for p in check(client, key, c, valid)]
        assert not problems, f"{key} through the proxy:\n" + "\n".join(problems)


def test_load_meets_its_slo_thresholds(
    stack: tuple[Stack, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """`make load-smoke` on the stack, bounded: a user class per model, every scenario. The
    thresholds are the smoke's, not the rating's (p99 50 ms at a paced rate: `make load`):
    here the stack shares two cores with pytest and Locust's unpaced users."""
    running, _ = stack
    out = tmp_path / "load"
    command = [
        sys.executable, "-m", "services.tools.load",
        "--host", running.proxy, "--users", str(len(KEYS)), "--spawn-rate", str(len(KEYS)),
        "--run-time", "25s", "--slo-p95-ms", "300", "--slo-p99-ms", "1000",
        "--data-root", str(running.root), "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(
        command, cwd=ROOT, env=running.env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "SLO met" in run.stdout + run.stderr
    report = json.loads((out / "slo.json").read_text())
    assert report["breaches"] == []
    results = report["results"]
    for key in KEYS:
        sent = {name for name in results if name.startswith(f"POST {key} ")}
        expected = {f"POST {key} /predict"}
        if CATALOG[key].task_kind.BULK:  # a search, a picture: asked one at a time
            expected.add(f"POST {key} /predict [10]")
        assert expected <= sent, f"{key}: {sorted(sent)}"
        if CATALOG[key].features:
            assert f"POST {key} /predict [entity]" in sent
    malformed = [v for name, v in results.items() if name.endswith("[malformed]")]
    assert malformed and all(v["failures"] == 0 for v in malformed)  # each one a 400
    assert results["total"]["requests"] > 100
    assert (out / "locust.html").stat().st_size > 10_000
    assert (out / "locust_stats.csv").read_text().count("\n") > len(KEYS)


OVERLOAD_MAX_MS = 2000  # the slowest answer under overload beside pytest (make load: 1000)


def test_past_its_capacity_the_stack_sheds_fast_and_never_fails(
    stack: tuple[Stack, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """`make load`'s overload run: 450 requests/s offered by Poisson-paced users for 15 s,
    beside pytest (the quiet machine rates 600 since the costs fell, reports/load/capacity.md,
    where `make load`'s own run at 2x is the quiet overload check, every answer within 1 s).
    Here, beside pytest on a shared machine, every answer comes within 2 s (one took 1.18 s in
    CI): without the sheds the lines grow by seconds in 15 s, up to the services' 10 s
    timeout. What is not served is a 429/503 with Retry-After, never a 5xx else, a refused
    connection or a 502 from a live service."""
    running, _ = stack
    out = tmp_path / "load"
    command = [
        sys.executable, "-m", "services.tools.load.capacity", "--overload-only", "450",
        "--overload-time", "15s", "--overload-max-ms", str(OVERLOAD_MAX_MS),
        "--host", running.proxy,
        "--data-root", str(running.root), "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(
        command, cwd=ROOT, env=running.env, capture_output=True, text=True, timeout=240
    )
    assert (out / "overload.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "overload.json").read_text())
    slowest = dict(  # the slowest models first: a 504's is the one past the 10 s timeout
        sorted(((k, round(m["max_ms"])) for k, m in result["models"].items()), key=lambda x: -x[1])
    )
    assert run.returncode == 0 and result["passed"], (result["why"], result["statuses"], slowest)
    # every model within its bound (the 2 s, or 8 objectives or 8 of this run's CPU per
    # answer where that is more: a recording is a second of CPU whatever the load, and its
    # objective is 5 s; on the AVX2-only EPYC a detector's answer took 2,139 ms, over 8
    # of its objectives, because each cost more CPU there)
    bounds = overload_bounds(OVERLOAD_MAX_MS, objectives(), Step(**result))
    assert {k: ms for k, ms in slowest.items() if ms >= bounds[k]} == {}, bounds
    assert result["requests"] > 3000
    codes = {code for code in result["statuses"] if code.isdigit()}
    assert codes <= {"200", "400", "429", "503"}, result["statuses"]


def test_stack_stops_cleanly(stack: tuple[Stack, subprocess.CompletedProcess[str]]) -> None:
    running, _ = stack
    down = running.run("down")
    assert down.returncode == 0 and down.stdout.count("stopped") == len(KEYS) + 6
    assert not (Path(running.env["STACK_RUN_DIR"]) / "stack.json").exists()
