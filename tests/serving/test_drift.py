"""The drift service over HTTP: verdicts on real logged traffic, its contract, its gauges,
its credentials."""

import base64
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contract import paths, reference
from services.tools.examples import as_records
from tests.conftest import CATALOG
from tests.serving.conftest import ADMIN, ADMIN_TOKEN, Registry, Service, serve

pytestmark = pytest.mark.slow
WINDOW = 300
WEBHOOK_TOKEN = "test-webhook-token-0123456789"
FEEDBACK_TOKEN = "test-feedback-token-0123456789"


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Another population: older, richer, first class, women, boarded at Cherbourg, families."""
    return frame.assign(
        age=(frame["age"].fillna(30) + 30).clip(upper=100),
        fare=frame["fare"].fillna(10) * 6 + 50,
        pclass=1,
        sex="female",
        embarked="C",
        sibsp=(frame["sibsp"] + 3).clip(upper=10),
        parch=(frame["parch"] + 2).clip(upper=10),
    )


def traffic(registry: Registry, seed: int, shift: bool) -> list[dict[str, Any]]:
    """WINDOW records drawn (seeded) from the training split: the reference's population."""
    train = pd.read_parquet(paths.split_dir("titanic", registry.trained) / "train.parquet")
    rows = train.sample(WINDOW, replace=True, random_state=seed).reset_index(drop=True)
    return as_records(shifted(rows) if shift else rows, CATALOG["titanic"])


def send(service: Service, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), 50):
        response = service.post("/predict", {"records": records[start : start + 50]})
        assert response.status_code == 200, response.text


def watched(
    started: list[Service], registry: Registry, tmp_path: Path, key: str, models: list[str]
) -> tuple[Service, Service]:
    """`key`'s service and a drift service over `models` reading its prediction log (no
    schedule)."""
    log = f"sqlite:///{tmp_path / 'predictions.sqlite'}"
    model = serve(
        started, key, registry.uri, tmp_path, prediction_log=log, feedback_token=FEEDBACK_TOKEN
    )
    drift = Service("drift", registry.uri, tmp_path)
    drift.env |= {
        "DRIFT_PREDICTION_LOG": log,
        "DRIFT_MODELS": json.dumps(models),
        "DRIFT_SCHEDULE_S": "0",
        "DRIFT_WINDOW_ROWS": str(WINDOW),
        "DRIFT_MIN_ROWS": "100",
        "DRIFT_PERFORMANCE_MIN_RECORDS": "50",
        "DRIFT_STATE_DIR": str(tmp_path / "drift"),
        "DRIFT_RETRAIN": "off",
        "DRIFT_ADMIN_TOKEN": ADMIN_TOKEN,
        "DRIFT_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
    }
    drift.headers = ADMIN
    drift.start([sys.executable, "-m", "services.drift", "--port", str(drift.port)])
    started.append(drift)
    drift.wait()
    return model, drift


@pytest.fixture
def stack(
    started: list[Service], registry: Registry, tmp_path: Path
) -> Iterator[tuple[Service, Service]]:
    """A titanic service and a drift service reading its prediction log (no schedule)."""
    yield watched(started, registry, tmp_path, "titanic", ["titanic", "churn"])


def gauges(drift: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(drift.url + "/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_drift_is_found_in_shifted_traffic_and_not_in_unshifted(
    stack: tuple[Service, Service], registry: Registry
) -> None:
    model, drift = stack
    send(model, traffic(registry, seed=1, shift=False))
    calm = drift.post("/models/titanic/run", None).json()
    assert calm["rows"] == WINDOW and calm["version"] == "1"
    assert not calm["dataset_drifted"], calm["features"]
    assert calm["share_drifted"] < 0.2
    assert not any(p["drifted"] for p in calm["prediction"].values())

    send(model, traffic(registry, seed=2, shift=True))  # the window is now all shifted
    alarm = drift.post("/models/titanic/run", None).json()
    assert alarm["dataset_drifted"] and alarm["share_drifted"] >= 0.5
    moved = {"age", "fare", "pclass", "sex", "embarked", "sibsp", "parch"}
    assert {n for n, f in alarm["features"].items() if f["drifted"]} >= moved - {"parch"}
    assert not alarm["features"]["name.words"]["drifted"]  # what was not shifted stays put
    assert alarm["prediction"]["prediction"]["drifted"]  # first-class women: survivors

    found = gauges(drift)
    assert found[("drift_dataset_drifted", (("model", "titanic"),))] == 1.0
    assert (
        found[("drift_share_drifted_features", (("model", "titanic"),))] == alarm["share_drifted"]
    )
    age = (("feature", "age"), ("method", "wasserstein"), ("model", "titanic"))
    assert found[("drift_feature_score", age)] == alarm["features"]["age"]["score"]
    assert found[("drift_window_rows", (("model", "titanic"),))] == WINDOW
    assert found[("drift_runs_total", (("model", "titanic"), ("outcome", "ok")))] == 2.0
    report = drift.get("/models/titanic/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "Drifted Columns" in report.text and "fare" in report.text
    index = drift.get("/").text
    assert "DRIFT" in index and 'href="models/titanic/report"' in index


def garments(registry: Registry, seed: int, upside_down: bool) -> list[dict[str, Any]]:
    """WINDOW training pictures of fashion_cnn (seeded), upright or turned upside down: the
    same pixels, so the same brightness, spread and ink, in another arrangement."""
    spec = CATALOG["fashion_cnn"]
    train = pd.read_parquet(paths.split_dir(spec.key, registry.trained) / "train.parquet")
    rows = train.sample(WINDOW, replace=True, random_state=seed).reset_index(drop=True)
    if upside_down:
        shape = spec.fields["image"].shape or []
        rows["image"] = [
            np.frombuffer(v, np.uint8).reshape(shape)[::-1].tobytes() for v in rows["image"]
        ]
    return as_records(rows, spec)


def test_the_embedding_finds_pictures_that_brightness_cannot(
    started: list[Service], registry: Registry, tmp_path: Path
) -> None:
    """Upside-down garments have the training pictures' light and ink, value for value: only
    the model's embedding of them (image.embedding_*) tells the window from the reference."""
    model, drift = watched(started, registry, tmp_path, "fashion_cnn", ["fashion_cnn"])
    embedded = reference.embedding_columns("image")
    send(model, garments(registry, seed=1, upside_down=False))
    calm = drift.post("/models/fashion_cnn/run", None).json()
    assert calm["rows"] == WINDOW
    assert not any(calm["features"][n]["drifted"] for n in embedded), calm["features"]

    send(model, garments(registry, seed=1, upside_down=True))
    alarm = drift.post("/models/fashion_cnn/run", None).json()
    for light in ("image.mean", "image.std", "image.ink"):  # identical to the calm window's
        assert alarm["features"][light]["score"] == pytest.approx(calm["features"][light]["score"])
        assert not alarm["features"][light]["drifted"]
    assert any(alarm["features"][n]["drifted"] for n in embedded), alarm["features"]
    found = gauges(drift)
    first = (("feature", embedded[0]), ("method", "wasserstein"), ("model", "fashion_cnn"))
    assert found[("drift_feature_score", first)] == alarm["features"][embedded[0]]["score"]


def test_bad_requests_get_clear_4xx_answers(stack: tuple[Service, Service]) -> None:
    _, drift = stack
    unknown = drift.post("/models/nope/run", None)
    assert unknown.status_code == 404
    assert "unknown model 'nope'" in unknown.json()["detail"] and "titanic" in unknown.text
    empty = drift.post("/models/churn/run", None)  # nothing of churn was served
    assert empty.status_code == 422
    assert "0 logged predictions" in empty.json()["detail"] and "DRIFT_MIN_ROWS" in empty.text
    assert drift.get("/models/churn").status_code == 404
    assert drift.get("/models/churn/report").status_code == 404
    assert drift.get("/retraining/none").status_code == 404
    bad_hook = drift.post("/alerts", {"alerts": [{"status": "burning"}]})
    assert bad_hook.status_code == 422 and "status" in bad_hook.text
    wrong_model = {"status": "firing", "labels": {"action": "retrain", "model": "nope"}}
    refused = drift.post("/alerts", {"alerts": [wrong_model]})
    assert refused.status_code == 422 and refused.json()["refused"][0]["error"].startswith(
        "unknown model"
    )
    found = gauges(drift)
    assert found[("drift_runs_total", (("model", "churn"), ("outcome", "empty_window")))] == 1.0
    assert found[("retraining_runs_total", (("model", "churn"), ("outcome", "failed")))] == 0.0


READS = ["/", "/models", "/models/titanic", "/models/titanic/report", "/retraining",
         "/retraining/none", "/events", "/models/titanic/performance",
         "/models/titanic/performance/report"]  # fmt: skip
ACTIONS = ["/models/titanic/run", "/models/titanic/retrain", "/models/titanic/performance/run"]
HOOKS = ["/alerts", "/alerts/log"]


def labelled(model: Service, registry: Registry, flip: bool = False) -> list[dict[str, Any]]:
    """The whole held-out split predicted, and its true outcomes sent back (or their
    opposites: a world where the model is wrong): the answers' predictions."""
    spec = CATALOG["titanic"]
    test = pd.read_parquet(paths.split_dir("titanic", registry.trained) / "test.parquet")
    answer = model.post("/predict", {"records": as_records(test, spec)}).json()
    outcomes = spec.task_kind.true_outcomes(test, spec)
    names = spec.task_kind.class_names(spec)
    if flip:
        outcomes = [names[1 - names.index(o)] for o in outcomes]
    sent = [{"request_id": answer["request_id"], "position": i, "outcome": o}
            for i, o in enumerate(outcomes)]  # fmt: skip
    stored = model.post("/feedback", {"outcomes": sent}, headers=bearer(FEEDBACK_TOKEN))
    assert stored.status_code == 200 and stored.json()["stored"] == len(test), stored.text
    return list(answer["predictions"])


def test_performance_on_labelled_traffic_is_the_tasks_metric_per_version(
    stack: tuple[Service, Service], registry: Registry
) -> None:
    """Outcomes sent to the model service are scored by the drift service with the task's
    own metrics: on the held-out split, what the version was registered with."""
    model, drift = stack
    assert drift.post("/models/titanic/performance/run", None).json()["versions"] == []
    assert drift.get("/models/titanic/performance/report").status_code == 404
    predictions = labelled(model, registry)
    run = drift.post("/models/titanic/performance/run", None)
    assert run.status_code == 200, run.text
    page = drift.get("/models/titanic/performance/report")  # Evidently's classification preset
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "ROC AUC" in page.text and "Precision" in page.text  # the preset's metrics
    (found,) = run.json()["versions"]
    size = len(predictions)
    assert (found["version"], found["alias"], found["records"]) == ("1", "champion", size)
    assert found["served"] == size and found["coverage"] == 1.0 and found["delay_s"] >= 0
    registered = (
        registry.client()
        .get_run(registry.client().get_model_version("titanic", "1").run_id)
        .data.metrics
    )
    # the served P(positive) is float32: its AUC matches the held-out one to rounding
    assert found["metrics"]["roc_auc"] == pytest.approx(registered["roc_auc"], abs=2e-3)
    assert found["metrics"]["accuracy"] == pytest.approx(registered["accuracy"], abs=2e-3)
    assert found["registered"] == {k: registered[k] for k in CATALOG["titanic"].floors}
    assert drift.get("/models/titanic/performance").json()["versions"] == [found]
    version = (("alias", "champion"), ("model", "titanic"), ("version", "1"))
    metric = (("metric", "roc_auc"),)
    shown = gauges(drift)
    assert (
        shown[("model_performance", (version[0], metric[0], *version[1:]))]
        == found["metrics"]["roc_auc"]
    )
    assert (
        shown[("model_performance_registered", (version[0], metric[0], *version[1:]))]
        == registered["roc_auc"]
    )
    assert shown[("model_label_coverage", version)] == 1.0
    assert shown[("model_performance_records", version)] == size
    floor = (("bound", "min"), ("metric", "roc_auc"), ("model", "titanic"))
    assert shown[("model_performance_floor", floor)] == CATALOG["titanic"].floors["roc_auc"].min

    labelled(model, registry, flip=True)  # the world changed: what it predicts is now wrong
    (worse,) = drift.post("/models/titanic/performance/run", None).json()["versions"]
    assert worse["records"] == 2 * size and worse["served"] == 2 * size
    assert worse["metrics"]["roc_auc"] == pytest.approx(0.5, abs=1e-6)  # right half the time
    events = drift.get("/events").json()
    assert any("roc_auc 0.5" in e["text"] for e in events if e["kind"] == "performance")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{token}".encode()).decode()}


def test_every_route_but_the_probes_needs_its_credential(stack: tuple[Service, Service]) -> None:
    _, drift = stack
    nobody, wrong = {}, bearer("wrong-token-0123456789")
    hook_body = {"alerts": [{"status": "resolved", "labels": {"alertname": "X"}}]}
    for path in READS:
        for headers in (nobody, wrong, bearer(WEBHOOK_TOKEN), basic("wrong-token-0123456789")):
            answer = drift.get(path, headers=headers)
            assert answer.status_code == 401, (path, headers, answer.text)
            assert "Basic" in answer.headers["www-authenticate"]  # a browser asks for it
        for headers in (ADMIN, basic(ADMIN_TOKEN)):  # Basic too: the pages open in a browser
            assert drift.get(path, headers=headers).status_code not in (401, 403), path
    for path in ACTIONS:
        for headers in (nobody, wrong, bearer(WEBHOOK_TOKEN), basic(ADMIN_TOKEN)):
            answer = drift.post(path, None, headers=headers)  # never Basic: no cross-site POST
            assert answer.status_code == 401, (path, headers, answer.text)
            assert answer.headers["www-authenticate"].startswith('Bearer realm="admin"')
    # the kill switch (DRIFT_RETRAIN=off here) holds on the operator's route too
    off = drift.post("/models/titanic/retrain", None)
    assert off.status_code == 409 and "DRIFT_RETRAIN=off" in off.json()["detail"]
    for path in HOOKS:
        for headers in (nobody, wrong, basic(WEBHOOK_TOKEN)):
            assert drift.post(path, hook_body, headers=headers).status_code == 401, path
        for headers in (bearer(WEBHOOK_TOKEN), ADMIN):
            assert drift.post(path, hook_body, headers=headers).status_code in (200, 202), path
    for path in ("/livez", "/readyz", "/metrics"):
        assert drift.get(path, headers=nobody).status_code == 200, path


def test_hostile_bodies_get_4xx_and_leave_the_service_serving(
    stack: tuple[Service, Service],
) -> None:
    _, drift = stack
    json_headers = ADMIN | {"content-type": "application/json"}

    def chunks() -> Iterator[bytes]:
        yield from (b"x" * 2**17 for _ in range(50))  # 6.5 MB, no Content-Length

    def alert(labels: bytes) -> bytes:
        return b'{"alerts": [{"status": "firing", "labels": ' + labels + b"}]}"

    sent = [
        ("/alerts", b"x" * (2 * 2**20), {}),  # over the limit before any credential check
        ("/alerts", chunks(), ADMIN),
        ("/alerts", b"[" * 100_000 + b"]" * 100_000, json_headers),
        ("/alerts", alert(b'{"x": "\xff\xfe"}'), json_headers),  # not UTF-8
        ("/alerts/log", alert(b'{"\\ud800": "x"}'), json_headers),  # lone surrogates
        ("/alerts/log", alert(b'{"a": "\\udfff"}'), json_headers),
        ("/alerts/log", alert(b'{"a": 1' + b"0" * 5000 + b"}"), json_headers),
        ("/alerts/log", b'{"alerts": [' + b'{"status": "firing", "labels": {}}, ' * 1001 + b"{}]}",
         json_headers),
    ]  # fmt: skip
    for path, body, headers in sent:
        answer = httpx.post(drift.url + path, content=body, headers=headers, timeout=60)
        assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:300])
    refused = httpx.get(drift.url + "/events", headers={"Authorization": b"Basic \xff\xfe"})
    assert refused.status_code == 401
    # nothing of it reached the events: the pages still render
    assert drift.get("/events").status_code == 200 and drift.get("/").status_code == 200
    assert "Traceback" not in drift.log()
