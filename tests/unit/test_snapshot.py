"""snapshot@<key>: labelled records of a real SQLite prediction log as training rows, split
by time into what joins training and the gate's production window."""

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from contract import paths
from contract.catalog import ModelSpec
from pipelines import snapshot
from services.api import feedback
from services.api.predlog import TRUNCATED, PredictionLog, Row, dumps, open_sink
from tests.conftest import CATALOG

NAMES = list(CATALOG["titanic"].fields)


def passenger(age: float, sex: str = "female", fare: float | None = 30.0) -> dict[str, Any]:
    return {"pclass": 2, "name": "Doe, Mrs. Jane", "sex": sex, "age": age, "sibsp": 0,
            "parch": 0, "fare": fare, "cabin": None, "embarked": "S"}  # fmt: skip


def row(request_id: str, ts: float, records: list[dict[str, Any]], route: str = "/predict") -> Row:
    inputs = dumps({"columns": NAMES, "rows": [[r[n] for n in NAMES] for r in records]})
    outputs = dumps([{"label": "died", "probability": 0.2}] * len(records))
    positions = dumps(list(range(len(records))))
    return (ts, request_id, "titanic", "1", "champion", route, len(records), positions, inputs,
            outputs)  # fmt: skip


def marked(request_id: str, ts: float) -> Row:
    """A request whose inputs were over the log's cap: its record is a marker."""
    outputs = dumps([{"label": "died", "probability": 0.2}])
    inputs = dumps([{TRUNCATED: 90000}])
    return (ts, request_id, "titanic", "1", "champion", "/predict", 1, "[0]", inputs, outputs)


def write_log(url: str, rows: list[Row]) -> None:
    async def logged() -> None:
        log = PredictionLog(open_sink(url))
        await log.append(rows)
        await log.close()

    asyncio.run(logged())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A workspace whose train split codes the target 0 / 1, as titanic's does."""
    folder = paths.split_dir("titanic", tmp_path)
    folder.mkdir(parents=True)
    frame = pd.DataFrame([passenger(30.0), passenger(40.0, "male")])
    frame["survived"] = [1, 0]
    frame.to_parquet(folder / "train.parquet", index=False)
    return tmp_path


def spec_with(**production: Any) -> ModelSpec:
    base = CATALOG["titanic"]
    return base.model_copy(update={"production": base.production.model_copy(update=production)})


def test_labelled_records_become_rows_of_the_training_schema(root: Path) -> None:
    url = f"sqlite:///{root / 'log.sqlite'}"
    day = 86400.0
    served = [
        row(f"r{i}", 1000.0 + i * day, [passenger(20.0 + i), passenger(50.0 + i, "male")])
        for i in range(10)
    ]
    shadow = row("r9", 99 * day, [passenger(1.0)], route="shadow")
    write_log(url, [*served, shadow, marked("big", 5 * day)])
    outcomes = [
        (f"r{i}", p, '"survived"' if p == 0 else '"died"') for i in range(10) for p in (0, 1)
    ]
    feedback.store(url, "titanic", [*outcomes, ("big", 0, "1")])
    spec = spec_with(holdout=0.25, window_days=3.5)
    report = snapshot.take(spec, root, url)

    train = pd.read_parquet(paths.production_dir("titanic", root) / "train.parquet")
    holdout = snapshot.holdout(spec, root)
    assert report["labelled"] == 21 and report["without_inputs"] == 1 and report["invalid"] == 0
    # 20 rows: the newest 5 held out; of the other 15, those of the 3.5 days before the newest
    assert (report["holdout"], report["train"], report["outside_window"]) == (5, 3, 12)
    assert holdout["_predicted_at"].min() >= train["_predicted_at"].max()
    assert list(train.columns[: len(NAMES) + 1]) == [*NAMES, "survived"]
    assert set(holdout["survived"]) == {0, 1}  # coded as the train split codes it
    survived = holdout[holdout["sex"] == "female"]["survived"]
    assert (survived == 1).all()  # each record with its own outcome
    assert holdout["_request_id"].tolist()[-2:] == ["r9", "r9"]  # the shadow's copy is not one


def test_what_joins_training_is_weighted_and_only_when_the_entry_says_append(root: Path) -> None:
    url = f"sqlite:///{root / 'log.sqlite'}"
    write_log(url, [row(f"r{i}", 100.0 + i, [passenger(20.0 + i)]) for i in range(10)])
    feedback.store(url, "titanic", [(f"r{i}", 0, "1") for i in range(10)])
    snapshot.take(spec_with(holdout=0.3, weight=3), root, url)
    rows = snapshot.training_rows(spec_with(holdout=0.3, weight=3), root)
    assert len(rows) == 7 * 3 and "_predicted_at" not in rows
    assert snapshot.training_rows(spec_with(join="none"), root).empty


def test_records_that_fail_the_schema_are_left_out_and_counted(root: Path) -> None:
    url = f"sqlite:///{root / 'log.sqlite'}"
    write_log(url, [row("a", 1.0, [passenger(30.0), passenger(150.0), passenger(20.0, fare=-1)])])
    feedback.store(url, "titanic", [("a", 0, "1"), ("a", 1, "0"), ("a", 2, "0")])
    report = snapshot.take(spec_with(holdout=0.5), root, url)
    assert (report["labelled"], report["invalid"], report["train"] + report["holdout"]) == (3, 2, 1)
    assert any(f.startswith("age:") for f in report["schema_failures"])


def test_an_empty_log_gives_the_same_empty_files(root: Path) -> None:
    """A fresh clone's `dvc repro` (no log) writes what the committed dvc.lock holds."""
    url = f"sqlite:///{root / 'absent.sqlite'}"
    spec = CATALOG["titanic"]
    first = snapshot.take(spec, root, url)
    folder = paths.production_dir("titanic", root)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert snapshot.take(spec, root, url) == first
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert (first["labelled"], first["train"], first["holdout"]) == (0, 0, 0)
    assert snapshot.holdout(spec, root).empty


def test_models_that_cannot_learn_from_their_log_say_why(root: Path) -> None:
    for key in ("churn", "customer_segments"):
        spec = CATALOG[key]
        folder = paths.split_dir(key, root)
        folder.mkdir(parents=True)
        pd.DataFrame({spec.target.column: ["No"] if key == "churn" else [1]}).to_parquet(
            folder / "train.parquet"
        )
        report = snapshot.take(spec, root, f"sqlite:///{root / 'log.sqlite'}")
        assert report["labelled"] == 0 and report["skipped"], key
        assert report["schema_failures"] == [] and report["invalid"] == 0, key  # none read
    assert report["skipped"] == "clustering models do not learn from outcomes"


def test_a_relative_log_path_is_the_workspaces() -> None:
    assert snapshot.log_url("sqlite:///run/p.sqlite", Path("/w")) == "sqlite:////w/run/p.sqlite"
    assert snapshot.log_url("postgresql://h/db", Path("/w")) == "postgresql://h/db"
