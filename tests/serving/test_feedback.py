"""True outcomes through a real service: stored beside the log, joined to it, refused plainly."""

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from services.api import feedback
from services.tools.examples import as_records
from tests.conftest import CATALOG
from tests.serving.conftest import ADMIN, Registry, Service, held_out, serve
from tests.serving.test_predlog import samples, titanic

pytestmark = pytest.mark.slow

TOKEN = "test-feedback-token-0123456789"
CREDENTIAL = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def titanic_service(started: list[Service], registry: Registry, tmp_path: Path) -> Service:
    log = f"sqlite:///{tmp_path / 'log.sqlite'}"
    service = serve(
        started, "titanic", registry.uri, tmp_path, prediction_log=log, feedback_token=TOKEN
    )
    service.headers = CREDENTIAL
    return service


def stored(service: Service) -> list[tuple[str, int, str]]:
    path = service.env["SERVE_PREDICTION_LOG"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        query = "SELECT request_id, position, outcome FROM feedback ORDER BY request_id, position"
        return list(db.execute(query))


def predicted(service: Service, registry: Registry, n: int) -> dict[str, Any]:
    answer = service.post("/predict", {"records": titanic(registry, n)})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_outcomes_are_stored_once_and_joined_to_their_predictions(
    titanic_service: Service, registry: Registry
) -> None:
    service = titanic_service
    answer = predicted(service, registry, 3)
    rid = answer["request_id"]
    sent = [
        {"request_id": rid, "position": 0, "outcome": "survived"},
        {"request_id": rid, "position": 2, "outcome": 0},  # an index: stored by name
    ]
    first = service.post("/feedback", {"outcomes": sent})
    assert first.status_code == 200, first.text
    assert first.json()["stored"] == 2 and first.json()["duplicates"] == 0
    again = service.post("/feedback", {"outcomes": sent})  # a retry: nothing new
    assert again.status_code == 200 and again.json()["duplicates"] == 2
    assert [s["status"] for s in again.json()["outcomes"]] == ["duplicate", "duplicate"]
    assert stored(service) == [(rid, 0, '"survived"'), (rid, 2, '"died"')]

    url = service.env["SERVE_PREDICTION_LOG"]
    labelled, served = feedback.read_labelled(url, "titanic", time.time() - 60, 100)
    by_position = {r.prediction["probability"]: r.outcome for r in labelled}
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert by_position == {probabilities[0]: "survived", probabilities[2]: "died"}
    assert {r.version for r in labelled} == {answer["version"]}
    assert served == {(answer["version"], "champion"): 3}  # coverage's denominator
    counts = {s[0]["status"]: s[1] for s in samples(service, "serving_feedback_records_total")}
    assert counts == {"stored": 2.0, "duplicate": 2.0, "refused": 0.0}


def test_a_batch_with_any_unknown_or_conflicting_record_stores_nothing(
    titanic_service: Service, registry: Registry
) -> None:
    service = titanic_service
    rid = predicted(service, registry, 2)["request_id"]
    good = {"request_id": rid, "position": 0, "outcome": "died"}
    for wrong, status, problem in (
        ({"request_id": "never-served", "position": 0, "outcome": 1}, 404, "no prediction"),
        ({"request_id": rid, "position": 5, "outcome": 1}, 404, "answered: [0, 1]"),
    ):
        refused = service.post("/feedback", {"outcomes": [good, wrong]})
        assert refused.status_code == status, refused.text
        assert problem in refused.json()["detail"][0]["problem"]
    assert stored(service) == []
    assert service.post("/feedback", {"outcomes": [good]}).status_code == 200
    other = {**good, "outcome": "survived"}
    conflict = service.post("/feedback", {"outcomes": [{**good, "position": 1}, other]})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["detail"] == [
        {"request_id": rid, "position": 0, "stored": "died", "sent": "survived"}
    ]
    assert stored(service) == [(rid, 0, '"died"')]  # the first one stands, nothing else came


def test_a_wrong_outcome_is_a_400_naming_the_field(
    titanic_service: Service, registry: Registry
) -> None:
    service = titanic_service
    rid = predicted(service, registry, 1)["request_id"]
    for body, field in (
        ({"outcomes": [{"request_id": rid, "outcome": "drowned"}]}, "outcomes.0.outcome"),
        ({"outcomes": [{"request_id": rid, "outcome": 2}]}, "outcomes.0.outcome"),
        ({"outcomes": [{"request_id": rid, "position": -1, "outcome": 1}]}, "outcomes.0.position"),
        ({"outcomes": [{"request_id": "", "outcome": 1}]}, "outcomes.0.request_id"),
        ({"outcomes": []}, "outcomes"),
        ({"outcomes": [{"request_id": rid, "outcome": 1, "extra": 1}]}, "outcomes.0.extra"),
    ):
        refused = service.post("/feedback", body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["detail"][0]["field"] == field, refused.json()
    for raw in (b"", b"[1]", b'{"outcomes": "x"', "\ud800".encode("utf-8", "surrogatepass")):
        assert service.post_bytes("/feedback", raw).status_code == 400
    assert stored(service) == []


def test_feedback_needs_its_credential(titanic_service: Service, registry: Registry) -> None:
    service = titanic_service
    rid = predicted(service, registry, 1)["request_id"]
    body = {"outcomes": [{"request_id": rid, "outcome": 1}]}
    assert service.post("/feedback", body, headers={}).status_code == 401
    wrong = {"Authorization": "Bearer not-the-feedback-token-at-all"}
    assert service.post("/feedback", body, headers=wrong).status_code == 401
    # the admin token is another scope
    assert service.post("/feedback", body, headers=ADMIN).status_code == 401
    assert stored(service) == []


def test_without_a_feedback_token_feedback_is_refused(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    service = serve(started, "titanic", registry.uri, tmp_path, feedback_token="")
    answer = service.post("/feedback", {"outcomes": [{"request_id": "x", "outcome": 1}]})
    assert answer.status_code == 403
    assert "no credential is set" in answer.json()["error"]


def test_the_oip_form_takes_tensors(titanic_service: Service, registry: Registry) -> None:
    service = titanic_service
    rid = predicted(service, registry, 2)["request_id"]
    body = {
        "id": "batch-1",
        "inputs": [
            {"name": "request_id", "datatype": "BYTES", "shape": [2], "data": [rid, rid]},
            {"name": "position", "datatype": "INT64", "shape": [2], "data": [0, 1]},
            {"name": "outcome", "datatype": "INT64", "shape": [2], "data": [1, 0]},
        ],
    }
    answer = service.post("/v2/models/titanic/feedback", body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "model_name": "titanic",
        "id": "batch-1",
        "outputs": [
            {"name": "status", "datatype": "BYTES", "shape": [2], "data": ["stored", "stored"]}
        ],
    }
    assert stored(service) == [(rid, 0, '"survived"'), (rid, 1, '"died"')]
    short = {"inputs": [{**body["inputs"][0]}, {**body["inputs"][2], "shape": [3]}]}
    refused = service.post("/v2/models/titanic/feedback", short)
    assert (
        refused.status_code == 400
        and refused.json()["detail"][0]["field"] == "inputs[outcome].data"
    )
    assert service.post("/v2/models/churn/feedback", body).status_code == 404


def test_a_series_and_a_ranking_are_sent_back_too(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    log = f"sqlite:///{tmp_path / 'log.sqlite'}"
    for key in ("energy_forecast", "customer_segments"):
        service = serve(started, key, registry.uri, tmp_path, prediction_log=log,
                        feedback_token=TOKEN)  # fmt: skip
        service.headers = CREDENTIAL
        records = as_records(held_out(registry.trained, key, 2), CATALOG[key])
        answer = service.post("/predict", {"records": records}).json()
        horizon = CATALOG[key].target.horizon
        outcome = [1.0] * horizon if horizon else 1
        sent = {"outcomes": [{"request_id": answer["request_id"], "outcome": outcome}]}
        reply = service.post("/feedback", sent)
        if key == "customer_segments":  # segments are found, not known: nothing to send
            assert reply.status_code == 404 and "takes no feedback" in reply.json()["error"]
        else:
            assert reply.status_code == 200, reply.text
            short = {"outcomes": [{"request_id": answer["request_id"], "outcome": [1.0]}]}
            assert service.post("/feedback", short).status_code == 400
