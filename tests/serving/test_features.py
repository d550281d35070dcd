"""Entity-keyed requests of the Feast-backed models, against real services and the real store."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from contract.features import feature_store
from services.tools.examples import as_entities, as_records, entity_rows
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import Registry, Service, held_out

pytestmark = pytest.mark.slow
FEAST_KEYS = [k for k in KEYS if CATALOG[k].features]


def online_records(trained: Path, key: str, frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The raw-feature records a client would send: the online vector plus request fields."""
    spec = CATALOG[key]
    assert spec.features is not None
    store = feature_store(trained)
    rows = entity_rows(frame, spec)
    online = store.get_online_features(
        features=store.get_feature_service(spec.features.service), entity_rows=rows
    ).to_dict()
    vectors = pd.DataFrame(online).assign(
        **{n: [r[n] for r in rows] for n in spec.features.request}
    )
    return as_records(vectors, spec)


def probabilities(body: dict[str, Any]) -> np.ndarray:
    return np.array([p["probability"] for p in body["predictions"]])


@pytest.mark.parametrize("key", FEAST_KEYS)
def test_entity_keyed_equals_raw_features(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    frame = held_out(trained, key, rows=20)
    by_entity = services[key].post("/predict", as_entities(frame, CATALOG[key]))
    assert by_entity.status_code == 200, by_entity.text
    body = by_entity.json()
    assert body["feature_service"] == CATALOG[key].features.service  # type: ignore[union-attr]
    by_record = services[key].post("/predict", {"records": online_records(trained, key, frame)})
    assert by_record.status_code == 200, by_record.text
    np.testing.assert_array_equal(probabilities(body), probabilities(by_record.json()))
    assert [p["label"] for p in body["predictions"]] == [
        p["label"] for p in by_record.json()["predictions"]
    ]
    entity = CATALOG[key].features.entity  # type: ignore[union-attr]
    assert [p[entity] for p in body["predictions"]] == [str(v) for v in frame[entity]]


@pytest.mark.parametrize("key", FEAST_KEYS)
def test_registered_with_its_feature_service(registry: Registry, key: str) -> None:
    version = registry.client().get_model_version_by_alias(key, "champion")
    assert version.tags["feast.feature_service"] == CATALOG[key].features.service  # type: ignore[union-attr]


def test_missing_entity_is_a_404_in_place(services: dict[str, Service], trained: Path) -> None:
    frame = held_out(trained, "churn", rows=2)
    ids = [str(frame["customer_id"].iloc[0]), "C99998", str(frame["customer_id"].iloc[1])]
    response = services["churn"].post("/predict", {"customer_ids": ids})
    assert response.status_code == 200, response.text
    first, missing, last = response.json()["predictions"]
    assert "probability" in first and "probability" in last
    (error,) = missing["error"]
    assert error["status"] == 404 and "C99998" in error["error"]
    assert error["field"] == "customer_ids.1"
    none = services["churn"].post("/predict", {"customer_ids": ["C99998", "C99997"]})
    assert none.status_code == 404
    assert [d["status"] for d in none.json()["detail"]] == [404, 404]


def test_stale_features_are_reported(services: dict[str, Service], trained: Path) -> None:
    """The materialised snapshots are months old (beyond the 45-day TTL); a fresh row is not."""
    frame = held_out(trained, "churn", rows=1)
    old = services["churn"].post("/predict", as_entities(frame, CATALOG["churn"])).json()
    assert old["predictions"][0]["stale"] is True and old["stale_records"] == 1
    fresh = frame.drop(columns=["churn"]).assign(
        customer_id="C90001",
        event_timestamp=pd.Timestamp(datetime.now(UTC)),
        created=pd.Timestamp(datetime.now(UTC)),
    )
    feature_store(trained).write_to_online_store("customer_monthly", fresh)
    new = services["churn"].post("/predict", {"customer_ids": ["C90001"]}).json()
    assert new["predictions"][0]["stale"] is False and "stale_records" not in new
    assert new["predictions"][0]["feature_time"][:10] == datetime.now(UTC).date().isoformat()


@pytest.mark.parametrize(
    ("key", "body", "status", "field"),
    [
        ("churn", {"customer_ids": []}, 400, "customer_ids"),
        ("churn", {"customer_ids": [7]}, 400, "customer_ids.0.customer_id"),
        ("churn", {"customer_ids": ["C00001"], "records": []}, 400, "records"),
        ("churn", {"entities": [{"customer_id": "C00001", "tenure": 3}]}, 400, "entities.0.tenure"),
        ("credit_default", {"applicant_ids": ["A00001"]}, 400, "applicant_ids"),
        (
            "credit_default",
            {"entities": [{"applicant_id": "A00001", "Amount": 800, "Price": 900}]},
            400,
            "entities.0.Time",
        ),
        (
            "credit_default",
            {"entities": [{"applicant_id": "A00001", "Amount": -5, "Price": 900, "Time": 12}]},
            400,
            "entities.0.Amount",
        ),
    ],
)
def test_bad_entity_requests_name_the_field(
    services: dict[str, Service], key: str, body: dict[str, Any], status: int, field: str
) -> None:
    response = services[key].post("/predict", body)
    assert response.status_code == status, response.text
    assert field in [d["field"] for d in response.json()["detail"]]


def test_lookups_are_counted(services: dict[str, Service]) -> None:
    services["churn"].post("/predict", {"customer_ids": ["C99996"]})
    text = httpx.get(f"{services['churn'].url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = {"model": "churn", "feature_service": "churn_v1"}
    missing = tuple(sorted((labels | {"outcome": "missing"}).items()))
    assert samples[("serving_feature_lookups_total", missing)] >= 1
    assert samples[("serving_feature_fetch_seconds_count", tuple(sorted(labels.items())))] >= 1


def test_readyz_describes_the_feature_side(services: dict[str, Service]) -> None:
    ready = httpx.get(f"{services['credit_default'].url}/readyz").json()
    assert ready["features"]["feature_service"] == "credit_default_v1"
    assert ready["features"]["request_fields"] == ["Amount", "Price", "Time"]


@pytest.mark.parametrize("key", FEAST_KEYS)
def test_oip_v2_with_entity_keys(services: dict[str, Service], trained: Path, key: str) -> None:
    """tritonclient sends the entity key (and request fields) as tensors: same answers."""
    spec = CATALOG[key]
    assert spec.features is not None
    frame = held_out(trained, key, rows=5)
    client = triton.InferenceServerClient(services[key].url.removeprefix("http://"))
    inputs = []
    ids = np.array([[str(v).encode()] for v in frame[spec.features.entity]], dtype=object)
    tensor = triton.InferInput(spec.features.entity, list(ids.shape), "BYTES")
    tensor.set_data_from_numpy(ids, binary_data=True)
    inputs.append(tensor)
    for name in spec.features.request:
        values = frame[[name]].to_numpy(dtype=np.float32)
        tensor = triton.InferInput(name, list(values.shape), "FP32")
        tensor.set_data_from_numpy(values, binary_data=False)
        inputs.append(tensor)
    result = client.infer(key, inputs)
    response = result.get_response()
    assert response["parameters"]["feature_service"] == spec.features.service
    by_entity = services[key].post("/predict", as_entities(frame, spec)).json()
    np.testing.assert_allclose(
        result.as_numpy("probabilities")[:, 1], probabilities(by_entity), atol=1e-7
    )
    unknown = triton.InferInput(spec.features.entity, [1, 1], "BYTES")
    unknown.set_data_from_numpy(np.array([[b"X00000"]], dtype=object))
    extra = []  # the request fields of one loan, for credit_default
    for name in spec.features.request:
        extra.append(triton.InferInput(name, [1, 1], "FP32"))
        extra[-1].set_data_from_numpy(np.array([[12.0]], np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"none of the 1 entities could be served"):
        client.infer(key, [unknown, *extra])
