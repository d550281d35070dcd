"""Loading, outages, alias moves, champion / challenger, limits and shutdown, one service each."""

import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.tools.examples import as_records
from tests.conftest import CATALOG
from tests.serving.conftest import (
    ADMIN,
    ADMIN_TOKEN,
    Registry,
    Service,
    TrackingServer,
    free_port,
    held_out,
    serve,
)

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture
def own_registry(registry: Registry, tmp_path: Path) -> Registry:
    """A registry of its own that a test may change (the artifacts are shared)."""
    return Registry(tmp_path / "registry", registry.trained)


def records(registry: Registry, key: str, n: int) -> list[dict[str, Any]]:
    return as_records(held_out(registry.trained, key, n), CATALOG[key])


def test_not_ready_while_nothing_can_be_loaded(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    service = serve(started, "titanic", unreachable, tmp_path, wait=False)
    service.wait("/livez")
    service.wait_for_log("model not loaded")
    assert "registry unreachable" in httpx.get(service.url + "/readyz").json()["error"]
    assert httpx.get(service.url + "/v2/health/ready").status_code == 503
    answer = service.post("/predict", {"records": records(registry, "titanic", 1)})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"


def test_restart_serves_the_local_copy_while_the_registry_is_down(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    mlflow_server = TrackingServer(own_registry.uri, tmp_path)
    try:
        first = serve(started, "churn", mlflow_server.uri, tmp_path)
        body = {"records": records(own_registry, "churn", 3)}
        before = first.post("/predict", body).json()
        first.stop()
    finally:
        mlflow_server.stop()
    second = serve(started, "churn", mlflow_server.uri, tmp_path)
    after = second.post("/predict", body).json()
    assert after == before | {"request_id": after["request_id"]}
    assert re.search(r"registry unreachable .* local copy of churn@champion", second.log())
    second.stop()

    cached = tmp_path / "cache" / "churn" / "v1" / "model.onnx"
    cached.write_bytes(cached.read_bytes()[:-10] + b"corrupted!")
    third = serve(started, "churn", mlflow_server.uri, tmp_path, wait=False)
    third.wait_for_log("(corrupted)")
    assert httpx.get(third.url + "/readyz").status_code == 503
    assert httpx.get(third.url + "/livez").status_code == 200


def test_a_download_that_does_not_match_the_registry_is_refused(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    client = own_registry.client()
    client.set_model_version_tag("titanic", "1", "onnx_sha256", "0" * 64)
    service = serve(started, "titanic", own_registry.uri, tmp_path, wait=False)
    service.wait_for_log("the registry's onnx_sha256 tag says 000000000000")
    assert httpx.get(service.url + "/readyz").status_code == 503


def test_alias_move_is_picked_up_on_reload(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "house_prices", own_registry.uri, tmp_path)
    body = {"records": records(own_registry, "house_prices", 1)}
    assert service.post("/predict", body).json()["version"] == "1"
    moved = own_registry.copy_version("house_prices", "champion")
    reloaded = service.post("/admin/reload", None, headers=ADMIN).json()
    assert reloaded["versions"]["champion"] == moved
    assert service.post("/predict", body).json()["version"] == moved


API_KEYS = ("client-one-key-0123456789", "client-two-key-0123456789")


def test_inference_takes_api_keys_where_set_and_reload_only_the_admin_token(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "titanic", own_registry.uri, tmp_path, api_keys=",".join(API_KEYS))
    body = {"records": records(own_registry, "titanic", 1)}
    tensor = {"inputs": [{"name": "age", "shape": [1], "datatype": "FP32", "data": [30.0]}]}
    infer = "/v2/models/titanic/infer"
    wrong = {"Authorization": "Bearer wrong-key-0123456789"}
    for path, payload in (("/predict", body), (infer, tensor)):
        for headers in ({}, wrong, {"Authorization": f"Basic {API_KEYS[0]}"}):
            refused = service.post(path, payload, headers=headers)
            assert refused.status_code == 401, (path, headers, refused.text)
            assert refused.headers["www-authenticate"].startswith('Bearer realm="inference"')
            assert "SERVE_API_KEYS" in refused.json()["error"]  # the services' error body
        for key in API_KEYS:
            answer = service.post(path, payload, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code != 401, (path, answer.text)
    second = service.post("/predict", body, headers={"Authorization": f"Bearer {API_KEYS[1]}"})
    assert second.json()["predictions"]
    # an inference key is no admin credential, and the admin token is no inference key
    for headers in ({}, wrong, {"Authorization": f"Bearer {API_KEYS[0]}"}):
        assert service.post("/admin/reload", None, headers=headers).status_code == 401
    assert service.post("/admin/reload", None, headers=ADMIN).status_code == 200
    assert service.post("/predict", body, headers=ADMIN).status_code == 401
    for path in ("/livez", "/readyz", "/metrics", "/openapi.json"):
        assert service.get(path).status_code == 200, path
    # the 401s were counted like any answer, before the body was read
    counted = [
        line
        for line in service.get("/metrics").text.splitlines()
        if line.startswith("serving_requests_total{") and 'code="401"' in line
    ]
    assert any('route="/predict"' in line for line in counted), counted


def test_without_an_admin_token_reload_is_disabled_and_inference_is_open(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "titanic", own_registry.uri, tmp_path, admin_token="")
    body = {"records": records(own_registry, "titanic", 1)}
    assert service.post("/predict", body).status_code == 200  # no SERVE_API_KEYS: open
    for headers in ({}, ADMIN):
        disabled = service.post("/admin/reload", None, headers=headers)
        assert disabled.status_code == 403 and "no credential is set" in disabled.json()["error"]
    assert ADMIN_TOKEN not in service.log()


def test_split_sends_the_configured_share_to_the_challenger(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    challenger = own_registry.copy_version("titanic", "challenger")
    service = serve(
        started,
        "titanic",
        own_registry.uri,
        tmp_path,
        challenger_mode="split",
        challenger_share="0.3",
    )
    body = {"records": records(own_registry, "titanic", 1)}
    served = Counter()
    with httpx.Client(base_url=service.url) as client:
        for i in range(400):
            answer = client.post("/predict", json=body, headers={"X-Request-ID": f"ab-{i}"}).json()
            served[(answer["alias"], answer["version"])] += 1
        sticky = {
            client.post("/predict", json=body, headers={"X-Request-ID": "same"}).json()["alias"]
            for _ in range(10)
        }
    assert set(served) == {("champion", "1"), ("challenger", challenger)}
    assert abs(served[("challenger", challenger)] / 400 - 0.3) < 0.075  # 3 standard deviations
    assert len(sticky) == 1


def test_shadow_scores_the_challenger_and_answers_with_the_champion(
    started: list[Service], own_registry: Registry, tmp_path: Path
) -> None:
    challenger = own_registry.copy_version("review_sentiment", "challenger")
    service = serve(
        started, "review_sentiment", own_registry.uri, tmp_path, challenger_mode="shadow"
    )
    body = {"records": records(own_registry, "review_sentiment", 4)}
    answer = service.post("/predict", body, headers={"X-Request-ID": "shadow-1"}).json()
    assert (answer["alias"], answer["version"]) == ("champion", "1")
    time.sleep(0.5)  # the shadow is scored after the response is sent
    line = next(line for line in service.log().splitlines() if "services.shadow" in line)
    assert '"request_id":"shadow-1"' in line
    assert (
        '"champion":{"version":"1"' in line and f'"challenger":{{"version":"{challenger}"' in line
    )
    metrics = httpx.get(service.url + "/metrics").text
    series = f'agreement="same",model="review_sentiment",version="{challenger}"'
    assert f"serving_shadow_predictions_total{{{series}}} 4.0" in metrics


def big_batch(registry: Registry, n: int) -> dict[str, Any]:
    images = records(registry, "fashion_cnn", 50)
    return {"records": [images[i % 50] for i in range(n)]}


def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "fashion_cnn", registry.uri, tmp_path)
    body = big_batch(registry, 1000)
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(r=service.post("/predict", body)))
    worker.start()
    deadline = time.monotonic() + 30
    while (
        'serving_inflight_requests{model="fashion_cnn"} 1.0'
        not in httpx.get(service.url + "/metrics").text
    ):
        assert time.monotonic() < deadline, "the big request never got in flight"
    os.kill(service.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
    worker.join(60)
    assert result["r"].status_code == 200 and len(result["r"].json()["predictions"]) == 1000
    # uvicorn finishes, then exits by the signal it was sent (the conventional status)
    assert service.process.wait(30) in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    assert "Finished server process" in service.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(service.url + "/livez")


def test_slow_inference_is_504(started: list[Service], registry: Registry, tmp_path: Path) -> None:
    service = serve(started, "fashion_cnn", registry.uri, tmp_path, timeout_s="0.001")
    response = service.post("/predict", big_batch(registry, 200))
    assert response.status_code == 504
    assert service.post("/predict", big_batch(registry, 1)).status_code == 200  # inline, no timer


def test_overload_is_429_and_never_5xx(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "fashion_cnn", registry.uri, tmp_path, max_concurrency="1")
    body = big_batch(registry, 300)
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(service.post("/predict", body).status_code))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert 429 in codes and 200 in codes and max(codes) < 500, codes


def test_a_request_queued_past_the_limit_is_shed_fast(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    """The proxy stamps X-Request-Start; one that waited past SERVE_QUEUE_TIMEOUT_S is a 503
    with Retry-After and no work, counted as shed; a fresh, absent or garbled stamp is served."""
    service = serve(started, "titanic", registry.uri, tmp_path, queue_timeout_s="0.2")
    body = {"records": records(registry, "titanic", 2)}
    stale = service.post("/predict", body, headers={"X-Request-Start": f"t={time.time() - 2:.3f}"})
    assert stale.status_code == 503, stale.text
    assert stale.headers["retry-after"] == "1"
    assert "queued" in stale.json()["error"] and "SERVE_QUEUE_TIMEOUT_S" in stale.json()["error"]
    for stamp in (f"t={time.time():.3f}", "", "t=yesterday", f"{time.time() + 60:.3f}"):
        answer = service.post("/predict", body, headers={"X-Request-Start": stamp})
        assert answer.status_code == 200, (stamp, answer.text)
    text = httpx.get(service.url + "/metrics").text
    assert re.search(r'serving_shed_requests_total\{model="titanic",reason="queue"\} 1\.0', text)
    for phase in ("parse", "inference", "log"):  # where a request's time went
        count = re.search(
            rf'serving_request_phase_seconds_count\{{model="titanic",phase="{phase}"\}} (\S+)', text
        )
        assert count and float(count.group(1)) == 4.0, phase
    assert re.search(r'serving_event_loop_lag_seconds_count\{model="titanic"\} [1-9]', text)


def test_a_batch_that_waits_in_the_inference_line_past_the_limit_is_shed(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    """Admitted requests for a model slower than its traffic wait in its inference line: one
    that waited past the line's budget there (SERVE_QUEUE_TIMEOUT_S, or the model's p99
    objective where longer: the U-Net's 250 ms) is a 503 with Retry-After and is not run
    (canvases: a 32-canvas batch parses in milliseconds and takes the U-Net 0.1-0.2 s, so
    the fourth of six waits past 250 ms)."""
    service = serve(started, "fashion_segmentation", registry.uri, tmp_path, queue_timeout_s="0.05")
    body = {"records": records(registry, "fashion_segmentation", 32)}
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: answers.append(service.post("/predict", body)))
        for _ in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    codes = sorted(a.status_code for a in answers)
    assert len(codes) == 6 and 200 in codes and set(codes) == {200, 503}, codes
    for shed in (a for a in answers if a.status_code == 503):
        assert shed.headers["retry-after"] == "1"
        assert "for inference" in shed.json()["error"], shed.text
    text = httpx.get(service.url + "/metrics").text
    shed_line = r'serving_shed_requests_total\{model="fashion_segmentation",reason="inference"\} '
    found = re.search(shed_line + r"(\S+)", text)
    assert found and float(found.group(1)) == codes.count(503)


def padded(body: dict[str, Any], size: int) -> bytes:
    """`body` as JSON of exactly `size` bytes (whitespace after it)."""
    raw = json.dumps(body).encode()
    return raw + b" " * (size - len(raw))


def test_bodies_in_flight_are_bounded_in_bytes(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    """A slow upload that declared most of SERVE_MAX_BODY_BYTES_IN_FLIGHT holds its share: the
    next large body is a fast 503 with Retry-After, a small one is still served, and the share
    comes back when the upload ends."""
    limit = str(2**20)
    service = serve(started, "titanic", registry.uri, tmp_path,
                    max_body_bytes=limit, max_body_bytes_in_flight=limit)  # fmt: skip
    body = {"records": records(registry, "titanic", 2)}
    slow_body, large = padded(body, 900_000), padded(body, 200_000)
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as slow:
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(slow_body)}\r\n\r\n")  # fmt: skip
        slow.sendall(head.encode() + slow_body[:1000])
        deadline = time.monotonic() + 30
        while (refused := service.post_bytes("/predict", large)).status_code != 503:
            assert time.monotonic() < deadline, refused.text  # the slow one not read yet
            time.sleep(0.2)
        assert refused.headers["retry-after"] == "1"
        assert "bytes of request bodies in flight" in refused.json()["error"]
        assert service.post("/predict", body).status_code == 200  # small bodies still fit
        slow.sendall(slow_body[1000:])
        answer = slow.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 200"), answer[:500]
    assert service.post_bytes("/predict", large).status_code == 200  # the share came back


def test_metrics_add_up_over_workers(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = Service("titanic", registry.uri, tmp_path).start(workers=2)
    started.append(service)
    service.wait()  # one worker is ready; the other takes connections once it is too
    deadline = time.monotonic() + 300
    while service.log().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, service.log()[-3000:]
        time.sleep(0.5)
    body = {"records": records(registry, "titanic", 2)}
    for _ in range(40):
        with httpx.Client() as fresh:  # a new connection each time, to reach both workers
            assert fresh.post(service.url + "/predict", json=body).status_code == 200
    for _ in range(10):
        text = httpx.get(service.url + "/metrics").text
        count = re.search(
            r'serving_requests_total\{alias="champion",code="200",model="titanic",'
            r'route="/predict",version="1"\} (\S+)',
            text,
        )
        assert count and float(count.group(1)) == 40.0
        scores = re.search(r"serving_prediction_score_count\{[^}]*\} (\S+)", text)
        assert scores and float(scores.group(1)) == 80.0
    time.sleep(1.5)  # each worker flushes its request log every 0.5 s
    pids = set(re.findall(r" (\d+) services.requests", service.log()))
    assert len(pids) == 2  # both workers answered


def test_bentoml_service_answers_the_same_contract(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = Service("titanic", registry.uri, tmp_path, model="titanic")
    service.start(
        [
            str(BIN / "bentoml"),
            "serve",
            "services.bento:ModelService",
            "--port",
            str(service.port),
            "--host",
            "127.0.0.1",
        ]
    )
    started.append(service)
    service.wait()
    answer = service.post("/predict", {"records": records(registry, "titanic", 2)})
    assert answer.status_code == 200 and answer.json()["version"] == "1"
    assert httpx.get(service.url + "/v2/models/titanic/ready").status_code == 200
    assert service.post("/predict", {"records": [{"pclass": 9}]}).status_code == 400
    metrics = httpx.get(service.url + "/metrics").text  # the app's, with BentoML's own off
    assert 'serving_requests_total{alias="champion",code="200",model="titanic"' in metrics
