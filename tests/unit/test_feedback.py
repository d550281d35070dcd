"""Outcomes on the SQLite log: stored whole or not at all, joined, pruned; their bodies."""

import asyncio
from pathlib import Path

import orjson
import pytest

from contract.catalog import get_spec
from services.api import feedback, feedback_inputs
from services.api.errors import InputError
from services.api.predlog import PredictionLog, Row, dumps, open_sink, prune


def row(request_id: str, ts: float, alias: str = "champion", route: str = "/predict") -> Row:
    """A logged request of two records (positions 0 and 2: the one between was invalid)."""
    outputs = dumps(
        [{"label": "died", "probability": 0.1}, {"label": "survived", "probability": 0.9}]
    )
    inputs = dumps({"columns": ["age"], "rows": [[30], [40]]})
    version = "2" if alias == "challenger" else "1"
    return (ts, request_id, "titanic", version, alias, route, 2, "[0, 2]", inputs, outputs)


@pytest.fixture
def url(tmp_path: Path) -> str:
    location = f"sqlite:///{tmp_path / 'log.sqlite'}"

    async def logged() -> None:
        log = PredictionLog(open_sink(location))
        await log.append([row("a", 10.0), row("b", 20.0), row("b", 20.5, "challenger", "shadow")])
        await log.close()

    asyncio.run(logged())
    return location


def test_outcomes_are_stored_once_and_a_batch_is_all_or_nothing(url: str) -> None:
    assert feedback.store(url, "titanic", [("a", 0, '"died"'), ("a", 2, '"died"')]) == [
        "stored", "stored",
    ]  # fmt: skip
    assert feedback.store(url, "titanic", [("a", 0, '"died"')]) == ["duplicate"]
    with pytest.raises(feedback.UnknownPrediction) as unknown:
        feedback.store(url, "titanic", [("b", 0, '"died"'), ("a", 1, '"died"'), ("z", 0, "1")])
    problems = [(m["request_id"], m["position"]) for m in unknown.value.missing]
    assert problems == [("a", 1), ("z", 0)]  # position 1 was never answered
    with pytest.raises(feedback.ConflictingOutcome):
        feedback.store(url, "titanic", [("b", 0, '"died"'), ("a", 0, '"survived"')])
    with pytest.raises(feedback.UnknownPrediction):  # another model's request ids are unknown
        feedback.store(url, "churn", [("a", 0, '"stays"')])
    labelled, _ = feedback.read_labelled(url, "titanic", 0, 100)
    assert sorted((r.outcome, r.prediction["probability"]) for r in labelled) == [
        ("died", 0.1),
        ("died", 0.9),
    ]  # fmt: skip  (b's outcome never landed: its batch failed)


def test_the_join_gives_each_version_its_records_and_the_shadow_its_own(url: str) -> None:
    feedback.store(url, "titanic", [("b", 2, '"survived"')], now=30.0)
    labelled, served = feedback.read_labelled(url, "titanic", 0, 100)
    assert sorted((r.version, r.alias, r.outcome) for r in labelled) == [
        ("1", "champion", "survived"), ("2", "challenger", "survived"),
    ]  # fmt: skip
    assert {(r.predicted_at, r.received_at) for r in labelled} == {(20.0, 30.0), (20.5, 30.0)}
    assert served == {("1", "champion"): 4, ("2", "challenger"): 2}
    since_15 = feedback.read_labelled(url, "titanic", 15.0, 100)[1]  # a was logged before
    assert since_15 == {("1", "champion"): 2, ("2", "challenger"): 2}
    assert len(feedback.read_labelled(url, "titanic", 0, 1)[0]) == 1  # bounded


def test_outcomes_go_with_their_predictions(url: str) -> None:
    feedback.store(url, "titanic", [("a", 0, '"died"'), ("b", 0, '"died"')])
    assert prune(url, max_age_s=0, max_rows=2) == 1  # a's row goes (the oldest)
    assert feedback.prune(url, batch=1) == 1
    left = feedback.read_labelled(url, "titanic", 0, 100)[0]
    assert sorted(r.predicted_at for r in left) == [20.0, 20.5]  # b's, and its shadow's


def test_nothing_logged_yet_reads_as_empty(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.sqlite'}"
    assert feedback.read_labelled(url, "titanic", 0, 10) == ([], {})
    assert feedback.prune(url) == 0


MODEL = feedback_inputs.feedback_model(get_spec("titanic"), 3)


def test_the_oip_form_becomes_the_same_items() -> None:
    assert MODEL is not None
    body = {
        "id": "x",
        "inputs": [
            {"name": "request_id", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            {"name": "outcome", "datatype": "BYTES", "shape": [2], "data": ["died", "survived"]},
        ],
    }
    items, request_id = feedback_inputs.parse_tensors(MODEL, orjson.dumps(body))
    assert request_id == "x" and items == [("a", 0, '"died"'), ("b", 0, '"survived"')]
    series = feedback_inputs.feedback_model(get_spec("energy_forecast"), 3)
    assert series is not None
    horizon = get_spec("energy_forecast").target.horizon or 0
    two = {"inputs": [
        {"name": "request_id", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
        {"name": "outcome", "datatype": "FP64", "shape": [2, horizon], "data": [1.0] * 2 * horizon},
    ]}  # fmt: skip
    items, _ = feedback_inputs.parse_tensors(series, orjson.dumps(two))
    assert [len(orjson.loads(o)) for _, _, o in items] == [horizon, horizon]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b'{"inputs": 3}', "inputs"),
        (b'{"inputs": [{"name": "outcome", "shape": [1], "data": [1]}]}', "inputs"),
        (
            b'{"inputs": [{"name": "request_id", "shape": [1], "data": ["a"]},'
            b' {"name": "request_id", "shape": [1], "data": ["a"]}]}',
            "inputs[request_id]",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [true], "data": ["a"]},'
            b' {"name": "outcome", "shape": [1], "data": [1]}]}',
            "inputs[request_id].shape",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [2], "data": ["a"]},'
            b' {"name": "outcome", "shape": [1], "data": [1]}]}',
            "inputs[request_id].data",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [2], "data": ["a", "b"]},'
            b' {"name": "outcome", "shape": [1], "data": [1]}]}',
            "inputs[outcome]",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [1], "data": ["a"]},'
            b' {"name": "outcome", "shape": [1], "data": ["drowned"]}]}',
            "outcomes.0.outcome",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [4], "data": ["a", "b", "c", "d"]},'
            b' {"name": "outcome", "shape": [4], "data": [1, 1, 1, 1]}]}',
            "outcomes",
        ),
        (
            b'{"inputs": [{"name": "request_id", "shape": [1], "data": ["a"]},'
            b' {"name": "position", "shape": [1], "data": [3]},'
            b' {"name": "outcome", "shape": [1], "data": [1]}]}',
            "outcomes.0.position",
        ),
    ],
)
def test_a_wrong_oip_body_is_a_400_naming_the_part(body: bytes, field: str) -> None:
    assert MODEL is not None
    with pytest.raises(InputError) as refused:
        feedback_inputs.parse_tensors(MODEL, body)
    assert refused.value.status == 400 and refused.value.detail[0]["field"] == field
