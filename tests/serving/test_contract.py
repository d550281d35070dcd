"""The common contract, for every catalog model, against real services over HTTP."""

import base64
import io
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from services.tools.examples import OIP_DATATYPES, as_records, as_tensors
from tests.conftest import CATALOG, KEYS
from tests.serving.conftest import (
    Service,
    expected_outputs,
    held_out,
    served_threshold,
)

pytestmark = pytest.mark.slow


def check_against_onnx(
    key: str,
    predictions: list[dict[str, Any]],
    expected: dict[str, Any],
    threshold: float | None = None,
) -> None:
    spec = CATALOG[key]
    if spec.task == "regression":
        got = np.array([p["value"] for p in predictions])
        np.testing.assert_allclose(got, expected["prediction"].reshape(-1), rtol=1e-6)
        return
    if spec.task == "forecast":  # one value per step of the horizon
        got = np.array([p["forecast"] for p in predictions])
        np.testing.assert_allclose(got, expected["forecast"], rtol=1e-6)
        assert got.shape[1] == spec.target.horizon
        return
    if spec.task == "retrieval":  # the top k documents: id, text, cosine similarity
        item = spec.target.item
        assert [[r[item] for r in p["results"]] for p in predictions] == expected["ids"].tolist()
        assert [[r["text"] for r in p["results"]] for p in predictions] == expected[
            "texts"
        ].tolist()
        got = np.array([[r["score"] for r in p["results"]] for p in predictions])
        np.testing.assert_allclose(got, expected["scores"], atol=1e-5)
        assert all(np.all(np.diff(row) <= 1e-6) for row in got)  # best first
        assert got.shape[1] == spec.params["top_k"]
        return
    if spec.task == "recommendation":  # top-k items, names, predicted ratings; the fallback
        item, name = spec.target.item, spec.target.item_name
        assert [[r[item] for r in p["recommendations"]] for p in predictions] == expected[
            "items"
        ].tolist()
        assert [[r[name] for r in p["recommendations"]] for p in predictions] == [
            [n.decode() if isinstance(n, bytes) else n for n in row]
            for row in expected["names"].tolist()
        ]
        got = np.array([[r["score"] for r in p["recommendations"]] for p in predictions])
        np.testing.assert_allclose(got, expected["scores"], atol=1e-6)
        assert [p["fallback"] for p in predictions] == expected["fallback"].tolist()
        return
    if spec.task == "clustering":  # the nearest segment, its distance and its profile
        names = [p["profile"]["segment"] for p in predictions]
        assert [p["label"] for p in predictions] == names
        assert names == [f"segment {i + 1}" for i in expected["label"]]
        got = np.array([p["distance"] for p in predictions])
        np.testing.assert_allclose(got, expected["distances"].min(axis=1), atol=1e-6)
        assert all(0 < p["profile"]["share"] < 1 for p in predictions)
        return
    if spec.task == "detection":  # the boxes at the served threshold, best first
        floor = threshold or 0.0
        for answer, count, boxes, scores in zip(
            predictions, expected["count"], expected["boxes"], expected["scores"], strict=True
        ):
            kept = scores[:count] >= floor
            assert answer["count"] == len(answer["boxes"]) == int(kept.sum()) > 0
            got = np.array([b["box"] for b in answer["boxes"]])
            np.testing.assert_allclose(got, boxes[:count][kept], atol=0.02)
            found = np.array([b["score"] for b in answer["boxes"]])
            np.testing.assert_allclose(found, scores[:count][kept], atol=1e-4)
            assert np.all(np.diff(found) <= 1e-6) and {b["label"] for b in answer["boxes"]} == {
                "tree"
            }
        return
    if spec.task == "segmentation":  # the mask as a PNG of class indices, and its areas
        for answer, mask in zip(predictions, expected["label"], strict=True):
            decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
            assert (decoded == mask).mean() > 0.999  # a pixel at a near tie may round apart
            assert answer["classes"] == spec.class_names
            assert abs(sum(answer["areas"].values()) - int((mask > 0).sum())) <= 8
        return
    if spec.task == "transcription":  # the same decoder on the same features: the same words
        assert [p["text"] for p in predictions] == expected["text"].tolist()
        got = np.array([p["confidence"] for p in predictions])
        np.testing.assert_allclose(got, expected["confidence"], rtol=1e-5)
        np.testing.assert_allclose([p["seconds"] for p in predictions], expected["seconds"], 1e-3)
        assert all(p["text"] for p in predictions)  # real speech: never an empty transcript
        return
    classes = spec.class_names
    assert [p["label"] for p in predictions] == [classes[i] for i in expected["label"]]
    if spec.task == "anomaly":  # the score, and the threshold the label was decided with
        got = np.array([p["score"] for p in predictions])
        np.testing.assert_allclose(got, expected["score"].reshape(-1), atol=1e-6)
        threshold = {p["threshold"] for p in predictions}
        assert len(threshold) == 1 and 0 < threshold.pop() < 1
        assert all((p["score"] > p["threshold"]) == (p["label"] == "anomaly") for p in predictions)
    elif spec.task == "binary":
        got = np.array([p["probability"] for p in predictions])
        np.testing.assert_allclose(got, expected["probabilities"][:, 1], atol=1e-6)
    else:
        got = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
        np.testing.assert_allclose(got, expected["probabilities"], atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_health_routes(services: dict[str, Service], key: str) -> None:
    url = services[key].url
    assert httpx.get(f"{url}/livez").status_code == 200
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["model"] == key and ready["versions"]["champion"] == "1"
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize("key", KEYS)
def test_predict_matches_onnx_runtime(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    frame = held_out(trained, key)
    response = services[key].post(
        "/predict",
        {"records": as_records(frame, CATALOG[key])},
        headers={"X-Request-ID": f"contract-{key}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == f"contract-{key}"
    body = response.json()
    assert (body["model"], body["version"], body["alias"]) == (key, "1", "champion")
    assert len(body["predictions"]) == len(frame)
    expected = expected_outputs(trained, key, frame)
    check_against_onnx(key, body["predictions"], expected, served_threshold(trained, key))
    services[key].wait_for_log(f"request_id=contract-{key}")  # the request log is buffered


def test_image_as_base64_png(services: dict[str, Service], trained: Path) -> None:
    spec = CATALOG["fashion_cnn"]
    frame = held_out(trained, "fashion_cnn")
    lists = services["fashion_cnn"].post("/predict", {"records": as_records(frame, spec)}).json()
    pngs = services["fashion_cnn"].post("/predict", {"records": as_records(frame, spec, png=True)})
    assert pngs.status_code == 200, pngs.text
    assert pngs.json()["predictions"] == lists["predictions"]


def bad_value(key: str) -> tuple[str, Any, str]:
    """(field, a value the catalog forbids, the word the error must use)."""
    for name, field in CATALOG[key].fields.items():
        if field.type == "series":  # its elements are bounded (tests/unit/test_serving.py)
            continue
        if field.max is not None:
            return name, field.max + 1, "less than or equal"
        if field.values:
            return name, "no-such-category", "Input should be"
    name = next(iter(CATALOG[key].fields))
    return name, {"not": "a value"}, "valid"


@pytest.mark.parametrize("key", KEYS)
def test_invalid_field_is_400_naming_it(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    (record,) = as_records(held_out(trained, key, 1), CATALOG[key])
    field, value, words = bad_value(key)
    response = services[key].post("/predict", {"records": [record | {field: value}]})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert any(d["field"] == f"records.0.{field}" and words in d["error"] for d in detail), detail


@pytest.mark.parametrize("key", KEYS)
def test_bad_record_does_not_break_the_others(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    good = as_records(held_out(trained, key, 2), CATALOG[key])
    field, value, _ = bad_value(key)
    response = services[key].post("/predict", {"records": [good[0], good[1] | {field: value}]})
    assert response.status_code == 200
    first, second = response.json()["predictions"]
    assert "error" not in first
    assert second["error"][0]["field"] == f"records.1.{field}"
    assert response.json()["invalid_records"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"records": []}', "records"),
        (b'{"records": {"a": 1}}', "records"),
        (b'{"records": [{}], "extra": 1}', "extra"),
    ],
)
def test_malformed_envelopes_are_400(services: dict[str, Service], body: bytes, field: str) -> None:
    response = httpx.post(services["titanic"].url + "/predict", content=body)
    assert response.status_code == 400
    assert response.json()["detail"][0]["field"] == field


def test_missing_and_unexpected_fields_are_named(
    services: dict[str, Service], trained: Path
) -> None:
    (record,) = as_records(held_out(trained, "titanic", 1), CATALOG["titanic"])
    del record["sex"]
    response = services["titanic"].post("/predict", {"records": [record | {"Sex": "male"}]})
    fields = {d["field"]: d["error"] for d in response.json()["detail"]}
    assert response.status_code == 400
    assert fields == {
        "records.0.sex": "Field required",
        "records.0.Sex": "Extra inputs are not permitted",
    }


def test_too_many_records_is_413(services: dict[str, Service], trained: Path) -> None:
    (record,) = as_records(held_out(trained, "churn", 1), CATALOG["churn"])
    response = services["churn"].post("/predict", {"records": [record] * 1001})
    assert response.status_code == 413
    assert response.json()["detail"][0]["expected"] == {"max_records": 1000}


def test_body_over_the_limit_is_413(services: dict[str, Service]) -> None:
    response = httpx.post(
        services["review_sentiment"].url + "/predict",
        content=b'{"records": [{"review": "' + b"a" * (17 * 2**20) + b'"}]}',
    )
    assert response.status_code == 413


def test_predict_takes_only_post_and_counts_what_is_in_flight(
    services: dict[str, Service], trained: Path
) -> None:
    """The guard answers POST /predict itself; other methods still reach the router's 405
    (in the contract's shape), and the in-flight gauge reads the guard's count at scrape."""
    service = services["titanic"]
    for method in ("GET", "PUT", "DELETE"):
        response = httpx.request(method, service.url + "/predict")
        assert response.status_code == 405, method
        assert response.json()["error"] == "Method Not Allowed"
        assert response.headers["x-request-id"]
    records = as_records(held_out(trained, "titanic", 2), CATALOG["titanic"])
    assert service.post("/predict", {"records": records}).status_code == 200
    text = httpx.get(service.url + "/metrics").text
    assert 'serving_inflight_requests{model="titanic"} 0.0' in text
    phases = ("parse", "inference", "log")
    for phase in phases:
        assert f'serving_request_phase_seconds_count{{model="titanic",phase="{phase}"}}' in text


def test_unknown_model_is_404(services: dict[str, Service]) -> None:
    response = httpx.post(services["titanic"].url + "/v2/models/churn/infer", json={"inputs": []})
    assert response.status_code == 404
    assert "titanic" in response.json()["error"]
    assert httpx.get(services["titanic"].url + "/v2/models/titanic/versions/9").status_code == 404


def v2_inputs(key: str, frame: Any, binary: bool) -> list[triton.InferInput]:
    inputs = []
    for name, array in as_tensors(frame, CATALOG[key], binary).items():
        tensor = triton.InferInput(name, list(array.shape), OIP_DATATYPES[array.dtype.kind])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("key", KEYS)
def test_oip_v2_through_tritonclient(
    services: dict[str, Service], trained: Path, key: str, binary: bool
) -> None:
    client = triton.InferenceServerClient(services[key].url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(key)
    metadata = client.get_model_metadata(key)
    assert {i["name"] for i in metadata["inputs"]} == set(CATALOG[key].fields)
    frame = held_out(trained, key)
    expected = expected_outputs(trained, key, frame)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in expected]
    result = client.infer(key, v2_inputs(key, frame, binary), outputs=outputs)
    assert result.get_response()["model_version"] == "1"
    for name, array in expected.items():
        got = result.as_numpy(name)
        if array.dtype.kind in "OUSb":  # names (BYTES) and flags (BOOL): exactly
            decoded = [v.decode() if isinstance(v, bytes) else v for v in got.reshape(-1)]
            assert decoded == array.reshape(-1).tolist(), name
            assert got.shape == array.shape, name
        else:
            np.testing.assert_allclose(got, array, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_oip_v2_without_outputs_answers_every_output(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    """A request that names no outputs gets every output of the model, as Triton answers
    (a recommender's ratings of every item included), with the values ONNX Runtime gives."""
    client = triton.InferenceServerClient(services[key].url.removeprefix("http://"))
    frame = held_out(trained, key)
    expected = expected_outputs(trained, key, frame)
    result = client.infer(key, v2_inputs(key, frame, True))
    assert [o["name"] for o in result.get_response()["outputs"]] == list(expected)
    for name, array in expected.items():
        if array.dtype.kind not in "OUSb":
            np.testing.assert_allclose(result.as_numpy(name), array, rtol=1e-6, atol=1e-6)


def test_oip_v2_bad_tensor_is_400_naming_it(services: dict[str, Service], trained: Path) -> None:
    frame = held_out(trained, "titanic", 2)
    inputs = [i for i in v2_inputs("titanic", frame, True) if i.name() != "sex"]
    client = triton.InferenceServerClient(services["titanic"].url.removeprefix("http://"))
    with pytest.raises(Exception, match=r"\[400\] sex: required input is missing"):
        client.infer("titanic", inputs)
    wrong = triton.InferInput("sex", [2, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 1), np.float32))
    with pytest.raises(Exception, match=r"\[400\] sex: datatype FP32"):
        client.infer("titanic", [*inputs, wrong])


@pytest.mark.parametrize("key", KEYS)
def test_metrics_are_labelled_after_traffic(
    services: dict[str, Service], trained: Path, key: str
) -> None:
    services[key].post("/predict", {"records": as_records(held_out(trained, key, 3), CATALOG[key])})
    text = httpx.get(services[key].url + "/metrics").text
    labels = f'model="{key}",route="/predict",version="1"'
    assert f'serving_requests_total{{alias="champion",code="200",{labels}}}' in text
    assert f'serving_request_duration_seconds_count{{alias="champion",code="200",{labels}}}' in text
    assert f'serving_prediction_score_count{{alias="champion",model="{key}",version="1"}}' in text
    assert f'serving_batch_size_count{{model="{key}",route="/predict"}}' in text
    assert f'serving_model_info{{alias="champion",model="{key}"' in text
    metric = CATALOG[key].gate_metric
    assert f'serving_model_training_metric{{alias="champion",metric="{metric}"' in text
    # its latency objective, labelled with the duration histogram's bucket at it
    objective = re.search(
        rf'serving_latency_objective_seconds{{le="([^"]+)",model="{key}"}} (\S+)', text
    )
    assert objective and float(objective.group(2)) == CATALOG[key].slo.p99_ms / 1000
    bucket = f'alias="champion",code="200",le="{objective.group(1)}",{labels}'
    assert f"serving_request_duration_seconds_bucket{{{bucket}}}" in text
