"""The durable prediction log through a real service: counts, contents, crashes, outages."""

import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from services.api.predlog import records_of
from tests.conftest import CATALOG
from tests.serving.conftest import Registry, Service, held_out, serve
from tests.serving.test_contract import v2_inputs

pytestmark = pytest.mark.slow


def logged(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY id")]


def samples(service: Service, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(service.url + "/metrics").text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def titanic(registry: Registry, n: int) -> list[dict[str, Any]]:
    from services.tools.examples import as_records

    return as_records(held_out(registry.trained, "titanic", n), CATALOG["titanic"])


def test_the_log_holds_every_answered_prediction_and_nothing_else(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "log.sqlite"
    service = serve(started, "titanic", registry.uri, tmp_path, prediction_log=f"sqlite:///{path}")
    records = titanic(registry, 10)
    answers = [service.post("/predict", {"records": [r]}).json() for r in records]
    broken = [*records[:8], {**records[8], "age": -3}, {**records[9], "sex": "?"}]
    partial = service.post("/predict", {"records": broken}).json()  # 8 served, 2 in place
    assert partial["invalid_records"] == 2
    assert service.post("/predict", {"records": [{"age": "x"}]}).status_code == 400
    client = triton.InferenceServerClient(service.url.removeprefix("http://"))
    client.infer("titanic", v2_inputs("titanic", held_out(registry.trained, "titanic", 4), True))

    rows = logged(path)
    served = sum(
        v for labels, v in samples(service, "serving_requests_total") if labels["code"] == "200"
    )
    assert len(rows) == served == 12  # a row per answered request; the 400 has none
    assert sum(r["records"] for r in rows) == 10 + 8 + 4  # each predicted record once
    answered = {a["request_id"] for a in [*answers, partial]}
    assert {r["request_id"] for r in rows if r["route"] == "/predict"} == answered
    first = rows[0]
    assert records_of(orjson.loads(first["inputs"])) == [records[0]]
    assert orjson.loads(first["outputs"]) == answers[0]["predictions"]
    assert (first["model"], first["version"], first["alias"]) == ("titanic", "1", "champion")
    (mixed,) = [r for r in rows if r["request_id"] == partial["request_id"]]
    assert orjson.loads(mixed["positions"]) == [*range(8)]  # the two refused ones: none
    assert orjson.loads(mixed["outputs"]) == partial["predictions"][:8]
    (v2,) = [r for r in rows if r["route"] == "/v2/infer"]
    assert v2["records"] == 4 and "pclass" in records_of(orjson.loads(v2["inputs"]))[0]
    assert samples(service, "serving_prediction_log_rows_total") == [({"model": "titanic"}, 22.0)]
    assert samples(service, "serving_prediction_log_errors_total") == [({"model": "titanic"}, 0.0)]


def stream(
    service: Service, body: dict[str, Any], acknowledged: list[str], stop: threading.Event
) -> None:
    """Post until told to stop or the server is gone; keep the ids of the 200 answers."""
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            try:
                response = client.post(
                    service.url + "/predict", json=body, headers={"x-request-id": request_id}
                )
            except httpx.TransportError:
                return
            if response.status_code == 200:
                assert response.json()["request_id"] == request_id
                acknowledged.append(request_id)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_every_acknowledged_prediction_survives_the_end_of_the_process(
    started: list[Service], registry: Registry, tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "log.sqlite"
    service = serve(started, "titanic", registry.uri, tmp_path, prediction_log=f"sqlite:///{path}")
    body = {"records": titanic(registry, 3)}
    acknowledged: list[str] = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=stream, args=(service, body, acknowledged, stop)) for _ in range(4)
    ]
    for client in clients:
        client.start()
    time.sleep(2.0)  # mid-stream: four clients with requests in flight
    service.stop(sig)
    stop.set()
    for client in clients:
        client.join(30)
    assert len(acknowledged) > 50
    rows = logged(path)
    stored = {r["request_id"] for r in rows}
    missing = set(acknowledged) - stored
    assert not missing, f"{len(missing)} acknowledged predictions are not in the log"
    # a request can be stored and its answer lost with the process, never the reverse
    assert len(stored) - len(acknowledged) <= 4
    assert len(rows) == len(stored)  # each request once
    assert all(r["records"] == 3 == len(orjson.loads(r["outputs"])) for r in rows)


def test_a_prediction_that_cannot_be_logged_is_refused_with_503(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    unreachable = "postgresql://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9
    service = serve(started, "titanic", registry.uri, tmp_path, prediction_log=unreachable)
    response = service.post("/predict", {"records": titanic(registry, 1)})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"].startswith("prediction log unavailable, prediction not stored")
    assert httpx.get(service.url + "/readyz").status_code == 200  # the model itself is fine
    assert samples(service, "serving_prediction_log_errors_total") == [({"model": "titanic"}, 1.0)]


def test_off_serves_without_a_log(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "titanic", registry.uri, tmp_path, prediction_log="off")
    assert service.post("/predict", {"records": titanic(registry, 1)}).status_code == 200
    assert not (tmp_path / "predictions.sqlite").exists()
