"""`docker compose up` for real: the project's images built from its Dockerfile, the stack up
with the reduced params, and what a user sees afterwards, then `down` and a second `up` that
serves again from the persisted volumes. Grafana is left out (no registry here ships it)."""

import json
import time
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import CATALOG, KEYS
from tests.deploy.images import PROJECT_TARGETS, STAND_INS, TAG
from tests.deploy.seed import BUCKET, PREFIX, TRAINED_HERE
from tests.deploy.stack import ComposeStack, health

pytestmark = [pytest.mark.slow, pytest.mark.deploy]
# every long-running service that declares a healthcheck (locust's starts after the proxy)
HEALTHY = {
    *KEYS, "postgres", "redis", "minio", "mlflow", "feast", "triton", "proxy", "drift",
    "prometheus", "alertmanager", "locust",
}  # fmt: skip
ONE_SHOT = {"secrets", "trainer", "minio-init"}


def registered(stack: ComposeStack) -> dict[str, dict[str, str]]:
    """{model: {alias: version}} from MLflow's tables in the stack's Postgres."""
    with psycopg.connect(f"{stack.postgres_dsn}/mlflow") as db:
        rows = db.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    aliases: dict[str, dict[str, str]] = {}
    for name, alias, version in rows:
        aliases.setdefault(name, {})[alias] = str(version)
    return aliases


def bucket_keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def logged_predictions(stack: ComposeStack, prefix: str = "") -> int:
    """Rows in the prediction log (Locust's traffic too), or those of this test's requests."""
    with psycopg.connect(f"{stack.postgres_dsn}/predictions") as db:
        query = "SELECT count(*) FROM predictions WHERE request_id LIKE %s"
        (count,) = db.execute(query, (f"{prefix}%",)).fetchone() or (0,)
    return int(count)


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """JSON as clients such as tritonclient send it: NaN for a missing number (FP32)."""
    headers = {"content-type": "application/json", **headers}
    return httpx.post(url, content=json.dumps(body), headers=headers, timeout=60)


def predict(
    stack: ComposeStack, key: str, records: list[dict[str, Any]], request_id: str = ""
) -> dict[str, Any]:
    headers = {"X-Request-ID": f"{request_id}-{uuid.uuid4().hex}"} if request_id else {}
    response = post(f"{stack.proxy}/models/{key}/predict", {"records": records}, **headers)
    assert response.status_code == 200, f"{key}: {response.status_code} {response.text[:500]}"
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def payloads(stack: ComposeStack) -> dict[str, Any]:
    return stack.payloads()


def test_the_images_build_from_the_projects_dockerfile(build_times: dict[str, float]) -> None:
    expected = {f"mlops-reference/{t}:{TAG}" for t in PROJECT_TARGETS} | {
        f"mlops-reference-test/{t}:{TAG}" for t in STAND_INS
    }
    assert set(build_times) == expected


def test_every_service_turns_healthy_and_the_one_shots_succeed(stack: ComposeStack) -> None:
    stack.wait_healthy(HEALTHY)
    containers = stack.containers()
    assert "grafana" not in containers  # left out of the test, see compose.test.yml
    for name in ONE_SHOT:
        state = containers[name]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (name, state)
    # the project's own images run the project's own services
    for key in KEYS:
        assert containers[key]["Config"]["Image"] == f"mlops-reference/runtime:{TAG}"
    assert containers["trainer"]["Config"]["Image"] == f"mlops-reference/trainer:{TAG}"


def test_the_trainer_registered_every_model_in_postgres_with_artifacts_in_s3(
    stack: ComposeStack,
) -> None:
    aliases = registered(stack)
    assert set(aliases) == set(KEYS)
    assert all("champion" in a for a in aliases.values()), aliases
    s3 = stack.s3()
    onnx = [k for k in bucket_keys(s3, "mlflow") if k.endswith("model.onnx")]
    assert len(onnx) >= len(KEYS), onnx


def test_the_trainer_restored_the_remotes_runs_and_made_the_rest(stack: ComposeStack) -> None:
    """`dvc repro --pull`: the runs the remote held (tests/deploy/seed.py) are restored, those
    of TRAINED_HERE trained in the container, and the stages with side effects run every
    time; then `dvc push --run-cache` gives the remote the container's own runs. Prepare is
    restored too: it depends on Feast's declarations (apply.json), not on the store config
    in force, which differs here (Redis, a Postgres registry) from the host's."""
    ran, restored = stack.trainer_stages()
    assert {f"train@{key}" for key in TRAINED_HERE} <= set(ran), ran
    seeded = [key for key in KEYS if key not in TRAINED_HERE]
    for stage in ("prepare", "train"):
        assert {f"{stage}@{key}" for key in seeded} <= set(restored), (stage, ran)
    side_effects = {"features_apply", "features_materialize", *(f"register@{k}" for k in KEYS)}
    assert side_effects <= set(ran) and not side_effects & set(restored), (ran, restored)
    assert stack.seeded is not None
    runs = [k for k in bucket_keys(stack.s3(), BUCKET, f"{PREFIX}/runs/")]
    assert len(runs) > len(stack.seeded.runs), "the trainer pushed no run of its own"


def test_every_model_answers_predict_and_oip_through_the_proxy(
    stack: ComposeStack, payloads: dict[str, Any]
) -> None:
    for key in KEYS:
        body = predict(stack, key, payloads[key]["records"])
        assert body["model"] == key and len(body["predictions"]) == 2, body
        url = f"{stack.proxy}/models/{key}/v2/models/{key}/infer"
        infer = post(url, {"inputs": payloads[key]["inputs"]})
        assert infer.status_code == 200, f"{key}: {infer.text[:500]}"
        assert infer.json()["model_name"] == key
        ready = httpx.get(f"{stack.proxy}/models/{key}/v2/health/ready", timeout=30)
        assert ready.status_code == 200, key


def test_triton_serves_the_dl_repositories(stack: ComposeStack) -> None:
    served = [k for k, spec in CATALOG.items() if spec.triton is not None]
    for key in served:
        ready = httpx.get(f"{stack.url('TRITON_HTTP_PORT')}/v2/models/{key}/ready", timeout=30)
        assert ready.status_code == 200, (key, ready.text)


def test_prometheus_scrapes_every_target(stack: ComposeStack) -> None:
    deadline = time.monotonic() + 120  # a scrape interval or two after the services came up
    while True:
        targets = httpx.get(f"{stack.url('PROMETHEUS_PORT')}/api/v1/targets", timeout=30).json()
        active = targets["data"]["activeTargets"]
        down = {t["scrapeUrl"]: t["lastError"] for t in active if t["health"] != "up"}
        if not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert active and not down, down
    scraped = {t["labels"].get("service") for t in active}
    assert set(KEYS) <= scraped


def test_predictions_land_in_postgres_and_the_drift_service_checks_them(
    stack: ComposeStack, payloads: dict[str, Any]
) -> None:
    for _ in range(3):  # 300 records: above the drift window's minimum (DRIFT_MIN_ROWS=200)
        predict(stack, "titanic", payloads["titanic"]["batch"], request_id="deploy-drift")
    assert logged_predictions(stack, "deploy-drift") == 3
    drift, admin = stack.url("DRIFT_PORT"), bearer(stack.env["ADMIN_TOKEN"])
    assert httpx.post(f"{drift}/models/titanic/run", timeout=60).status_code == 401
    run = httpx.post(f"{drift}/models/titanic/run", headers=admin, timeout=300)
    assert run.status_code == 200, run.text[:1000]
    result = run.json()
    assert result["model"] == "titanic" and result["rows"] >= 300, result
    report = httpx.get(f"{stack.proxy}/drift/models/titanic/report", headers=admin, timeout=60)
    assert report.status_code == 200 and "<html" in report.text.lower()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_routes_need_their_tokens_and_the_proxy_publishes_none(stack: ComposeStack) -> None:
    admin, wrong = bearer(stack.env["ADMIN_TOKEN"]), bearer("wrong-token-0123456789")
    for path in ("/models/titanic/admin/reload", "/drift/models/titanic/retrain", "/drift/alerts"):
        hidden = httpx.post(f"{stack.proxy}{path}", json={"alerts": []}, headers=admin, timeout=30)
        assert hidden.status_code == 404 and "not published" in hidden.text, path
    drift = stack.url("DRIFT_PORT")
    for headers in ({}, wrong):
        assert httpx.get(f"{drift}/events", headers=headers, timeout=30).status_code == 401
        proxied = httpx.get(f"{stack.proxy}/drift/events", headers=headers, timeout=30)
        assert proxied.status_code == 401
    # Alertmanager reaches the drift service's webhook with its token (the secrets service's
    # file): an alert posted to Alertmanager shows up among the drift service's events
    name = f"DeployTest{uuid.uuid4().hex[:8]}"
    alert = [{"labels": {"alertname": name, "model": "titanic"},
              "annotations": {"summary": "deploy test"}}]  # fmt: skip
    sent = httpx.post(f"{stack.url('ALERTMANAGER_PORT')}/api/v2/alerts", json=alert, timeout=30)
    assert sent.status_code == 200, sent.text
    deadline, texts = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        events = httpx.get(f"{drift}/events", headers=admin, timeout=30).json()
        texts = [event["text"] for event in events]
        if any(name in text for text in texts):
            break
        time.sleep(3)
    assert any(name in text for text in texts), texts[:10]


def test_mlflow_asks_for_an_account_and_the_services_only_read(stack: ComposeStack) -> None:
    mlflow = stack.url("MLFLOW_PORT")
    models = f"{mlflow}/api/2.0/mlflow/registered-models"
    reader = ("reader", stack.env["MLFLOW_READER_PASSWORD"])
    for auth in (None, ("reader", "wrong-password-0123456789")):
        assert httpx.get(f"{models}/search", auth=auth, timeout=30).status_code == 401
    found = httpx.get(f"{models}/get", params={"name": "titanic"}, auth=reader, timeout=30)
    assert found.status_code == 200, found.text[:500]
    alias = {"name": "titanic", "alias": "deploy-test", "version": "1"}
    moved = httpx.post(f"{models}/alias", json=alias, auth=reader, timeout=30)
    assert moved.status_code == 403, moved.text[:500]
    admin = ("admin", stack.env["MLFLOW_ADMIN_PASSWORD"])
    assert httpx.get(f"{models}/search", auth=admin, timeout=30).status_code == 200


def test_a_second_up_serves_from_the_persisted_volumes(
    stack: ComposeStack, payloads: dict[str, Any]
) -> None:
    """`down` keeps the volumes; the second `up` retrains nothing and loses nothing, and its
    trainer pushes nothing (infra/docker/train: the remote holds every run already)."""
    aliases, logged = registered(stack), logged_predictions(stack)
    stack.down()
    seconds = stack.up()
    stack.progress(f"second up: {seconds:.0f} s")
    assert "the remote holds every run of this workspace already" in stack.last_line()
    assert registered(stack) == aliases  # no new version, no alias moved
    assert logged_predictions(stack) >= logged
    assert logged_predictions(stack, "deploy-drift") == 3
    stack.wait_healthy(HEALTHY)
    for key in KEYS:
        assert predict(stack, key, payloads[key]["records"], "deploy-again")["model"] == key
    assert logged_predictions(stack, "deploy-again") == len(KEYS)
    states = {name: health(c) for name, c in stack.containers().items()}
    assert all(state in (None, "healthy") for state in states.values()), states
