"""The prediction log's bounds on SQLite: retention, the per-request byte cap, the bounded
drift reader, timeouts (Postgres: tests/integration/test_predlog_postgres_bounds.py)."""

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.api import predlog
from services.api.predlog import (
    TRUNCATED,
    PredictionLog,
    PredictionLogUnavailable,
    Row,
    SQLiteSink,
    capped,
    connect_options,
    dumps,
    open_sink,
    prune,
    read_window,
    record_row,
    records_of,
    table,
)
from services.drift import detect, service
from services.drift.settings import DriftSettings
from tests.conftest import CATALOG


def row(request_id: str, ts: float = 1.0, records: int = 1, size: int = 0) -> Row:
    """A titanic row of `records` records; `size` pads each record's inputs."""
    inputs = [{"age": i, "note": "x" * size} for i in range(records)]
    outputs = [{"value": i} for i in range(records)]
    head = (ts, request_id, "titanic", "3", "champion", "/predict", records)
    return (*head, dumps(list(range(records))), dumps(inputs), dumps(outputs))


def stored(path: Path, column: str = "request_id") -> list[Any]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute(f"SELECT {column} FROM predictions ORDER BY id")]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


def fill(path: Path, rows: list[Row]) -> str:
    sink = SQLiteSink(path)
    sink.write(rows)
    sink.close()
    return f"sqlite:///{path}"


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses between full DELETE batches: one per batch that was not the last."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_prune_deletes_rows_older_than_the_age_in_batches(
    log_file: Path, pauses: list[float]
) -> None:
    url = fill(log_file, [row(f"r{i}", ts=float(i)) for i in range(10)])
    # ts 0..6 are older than 10 - 3 = 7: seven rows in batches of 2 (2, 2, 2, 1)
    assert prune(url, max_age_s=3, max_rows=0, now=10.0, batch=2) == 7
    assert len(pauses) == 3
    assert stored(log_file) == ["r7", "r8", "r9"]
    assert prune(url, max_age_s=3, max_rows=0, now=10.0, batch=2) == 0  # nothing left to do


def test_prune_keeps_the_newest_rows_by_count(log_file: Path, pauses: list[float]) -> None:
    # by id (commit order), not by ts: a late row with an old clock still counts as new
    url = fill(log_file, [row(f"r{i}", ts=100.0 - i) for i in range(10)])
    assert prune(url, max_age_s=0, max_rows=4, batch=3) == 6
    assert len(pauses) == 2  # 3, 3, then an empty batch ends it
    assert stored(log_file) == ["r6", "r7", "r8", "r9"]
    assert prune(url, max_age_s=0, max_rows=4) == 0
    assert prune(url, max_age_s=0, max_rows=100) == 0


def test_prune_applies_both_limits_and_zero_keeps_everything(log_file: Path) -> None:
    url = fill(log_file, [row(f"r{i}", ts=float(i)) for i in range(10)])
    assert prune(url, max_age_s=0, max_rows=0) == 0
    assert len(stored(log_file)) == 10
    # age removes ts < 3 (3 rows); then count keeps the newest 5 of the 7 left
    assert prune(url, max_age_s=7, max_rows=5, now=10.0) == 5
    assert stored(log_file) == ["r5", "r6", "r7", "r8", "r9"]


def test_prune_of_a_log_not_yet_written_deletes_nothing(tmp_path: Path) -> None:
    assert prune(f"sqlite:///{tmp_path / 'none.sqlite'}", 1, 1) == 0
    assert not (tmp_path / "none.sqlite").exists()  # not created by the pruning
    sqlite3.connect(tmp_path / "empty.sqlite").close()
    assert prune(f"sqlite:///{tmp_path / 'empty.sqlite'}", 1, 1) == 0
    assert prune("off", 1, 1) == 0


def test_prune_runs_while_a_service_writes(log_file: Path) -> None:
    """The services' connection stays open (WAL): deletes and inserts take turns."""
    sink = SQLiteSink(log_file)
    sink.write([row(f"old{i}", ts=1.0) for i in range(50)])
    assert prune(f"sqlite:///{log_file}", 60, 0, now=100.0, batch=7) == 50
    sink.write([row("new", ts=99.0)])
    sink.close()
    assert stored(log_file) == ["new"]


def test_the_age_keeps_a_row_committed_late_and_never_deletes_a_young_one(
    log_file: Path,
) -> None:
    # commit order (id) and clocks disagree: "late" was stamped at 2 but committed after "young"
    url = fill(
        log_file,
        [row("a", ts=1.0), row("young", ts=8.0), row("late", ts=2.0), row("b", ts=9.0)],
    )
    assert prune(url, max_age_s=5, max_rows=0, now=10.0) == 1  # the rows before "young"
    assert stored(log_file) == ["young", "late", "b"]  # "late" waits for a later boundary
    assert prune(url, max_age_s=0.5, max_rows=0, now=10.0) == 3  # every row older: all go
    assert stored(log_file) == []


def test_retention_walks_the_primary_key_and_needs_no_index_of_its_own(log_file: Path) -> None:
    fill(log_file, [])
    with contextlib.closing(sqlite3.connect(log_file)) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM predictions WHERE ts >= 5 ORDER BY id LIMIT 1"
        ).fetchall()
        indexes = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'predictions'"
        ).fetchall()
    assert "TEMP B-TREE" not in str(plan)  # no sort: the rowid order itself
    # the drift window's, and feedback's look-up by request id; none for the retention
    assert sorted(indexes) == [("predictions_model_id",), ("predictions_request_id",)]


def test_a_row_over_the_cap_keeps_its_outputs_and_marks_each_record() -> None:
    big = row("big", records=3, size=100)
    assert capped(big, 0) is big and capped(big, 10_000) is big  # off, or under the cap
    small = capped(big, 200)
    assert small[:8] == big[:8] and small[9] == big[9]
    sizes = [len(dumps({"age": i, "note": "x" * 100})) for i in range(3)]
    assert orjson.loads(small[8]) == [{TRUNCATED: size} for size in sizes]


def test_records_marked_from_the_records_are_not_marked_again() -> None:
    from pydantic import BaseModel

    class Record(BaseModel):
        age: int
        note: str

    records: list[BaseModel] = [Record(age=i, note="x" * 100) for i in range(3)]
    answer = {
        "request_id": "big", "model": "titanic", "version": "3", "alias": "champion",
        "predictions": [{"value": "y" * 300} for _ in records],
    }  # fmt: skip
    marked = record_row(answer, records, "/predict", 1.0, max_bytes=200)
    sizes = [len(dumps(record.__dict__)) for record in records]
    assert orjson.loads(marked[8]) == [{TRUNCATED: size} for size in sizes]
    # its outputs alone are over the cap: the log's flush keeps the records' own sizes
    assert capped(marked, 200) is marked
    assert capped(record_row(answer, records, "/predict", 1.0), 200)[8] == marked[8]


def test_a_batch_is_kept_as_a_table_or_marked_record_by_record() -> None:
    """Over the cap, markers of each record's own JSON size; under it, the table, whose size
    is what the cap measures: a batch over it as a list of records may fit as a table (each
    field's name written once, not once per record)."""
    from pydantic import BaseModel

    class Record(BaseModel):
        age: int
        note: str

    def answer(records: list[BaseModel]) -> dict[str, object]:
        return {
            "request_id": "r", "model": "titanic", "version": "3", "alias": "champion",
            "predictions": [{"value": 1.0} for _ in records],
        }  # fmt: skip

    big: list[BaseModel] = [Record(age=i, note="é" * (100 + i)) for i in range(10)]
    marked = record_row(answer(big), big, "/predict", 1.0, max_bytes=400)
    sizes = [len(dumps(record.__dict__)) for record in big]
    assert orjson.loads(marked[8]) == [{TRUNCATED: size} for size in sizes]
    many: list[BaseModel] = [Record(age=i, note="") for i in range(40)]
    listed = dumps([record.__dict__ for record in many])
    cap = len(listed) + len(dumps(answer(many)["predictions"])) - 1  # as a list: over it
    kept = record_row(answer(many), many, "/predict", 1.0, max_bytes=cap)
    assert len(kept[8]) + len(kept[9]) <= cap
    assert kept[8] == dumps(table(["age", "note"], [[i, ""] for i in range(40)]))
    assert records_of(orjson.loads(kept[8])) == orjson.loads(listed)


def test_the_log_stores_rows_over_the_cap_as_markers(log_file: Path) -> None:
    log = PredictionLog(SQLiteSink(log_file), max_bytes=500)

    async def traffic() -> None:
        await log.append([row("small", records=2), row("big", records=2, size=1000)])
        await log.close()

    asyncio.run(traffic())
    inputs = [orjson.loads(text) for text in stored(log_file, "inputs")]
    assert inputs[0] == [{"age": 0, "note": ""}, {"age": 1, "note": ""}]
    assert [set(record) for record in inputs[1]] == [{TRUNCATED}, {TRUNCATED}]
    assert stored(log_file, "records") == [2, 2]  # the predictions are still counted
    assert PredictionLog(None).max_bytes == predlog.MAX_ROW_BYTES  # the default: 1 MiB


def test_the_window_skips_records_without_inputs(log_file: Path) -> None:
    marked = capped(row("big", ts=2.0, records=2, size=1000), 500)
    url = fill(log_file, [row("a", ts=1.0, records=2), marked, row("b", ts=3.0)])
    found = read_window(url, "titanic", 10, since=0)
    assert [(ts, i["age"], o["value"]) for ts, _, i, o in found] == [
        (1.0, 0, 0),
        (1.0, 1, 1),
        (3.0, 0, 0),
    ]  # big's outputs are logged, but without inputs the window has nothing to compare


def test_the_window_stops_at_its_records_or_its_bytes(log_file: Path) -> None:
    rows = [row(f"r{i}", ts=float(i), records=2, size=50) for i in range(1000)]
    url = fill(log_file, rows)
    found = read_window(url, "titanic", 5, since=0)
    assert [ts for ts, *_ in found] == [997.0, 998.0, 998.0, 999.0, 999.0]
    each = len(rows[0][8]) + len(rows[0][9])
    # three rows' JSON fit the budget, the fourth would not: six records, newest
    found = read_window(url, "titanic", 100, since=0, max_bytes=3 * each + each // 2)
    assert [ts for ts, *_ in found] == [997.0, 997.0, 998.0, 998.0, 999.0, 999.0]
    assert read_window(url, "titanic", 100, since=0, max_bytes=each - 1) == []


def test_the_window_reads_rows_as_it_needs_them(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fetchmany, not fetchall: a window of 10 records does not read the whole log."""
    url = fill(log_file, [row(f"r{i}", ts=float(i)) for i in range(5 * predlog.FETCH)])
    parsed: list[str] = []

    def loads(text: str) -> Any:
        parsed.append(text)
        return orjson.loads(text)

    monkeypatch.setattr(predlog, "loads", loads)
    assert len(read_window(url, "titanic", 10, since=0)) == 10
    assert len(parsed) == 2 * 10  # inputs and outputs of ten rows, not of a thousand


def test_the_window_is_read_with_the_drift_settings(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> list[Any]:
        seen.update(kwargs)
        return []

    monkeypatch.setattr(detect, "read_window", spy)
    settings = DriftSettings(window_max_bytes=1234, log_timeout_s=7)
    with pytest.raises(detect.EmptyWindow):
        detect.window(CATALOG["titanic"], settings, time.time())
    assert seen == {"max_bytes": 1234, "timeout_s": 7}


class Stop(Exception):
    pass


def drift_state(url: str, **settings: Any) -> service.Drift:
    """What Drift.schedule and prune_log use, without a registry or a catalog."""
    drift = service.Drift.__new__(service.Drift)
    drift.settings = DriftSettings(prediction_log=url, **settings)
    drift.specs, drift.events = {}, deque()
    return drift


def test_the_drift_schedule_prunes_the_log_at_each_turn(
    log_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = fill(log_file, [row("old", ts=1.0), row("new", ts=time.time())])
    drift = drift_state(url, log_retention_s=3600)

    async def sleep(_: float) -> None:
        raise Stop  # after the first turn

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with caplog.at_level("INFO", "services.drift"), pytest.raises(Stop):
        asyncio.run(drift.schedule())
    assert stored(log_file) == ["new"]
    assert "prediction log: 1 rows pruned" in caplog.text


def test_a_failed_pruning_is_an_event_and_waits_for_the_next_turn() -> None:
    drift = drift_state("postgresql://nobody@127.0.0.1:9/predictions", log_timeout_s=1)
    assert drift.prune_log() == 0
    assert drift.events[0]["kind"] == "retention"
    assert "pruning the prediction log failed" in drift.events[0]["text"]


def test_the_bounds_default_to_the_documented_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_RETENTION_S", "LOG_MAX_ROWS", "WINDOW_MAX_BYTES", "LOG_TIMEOUT_S"):
        monkeypatch.delenv(f"DRIFT_{name}", raising=False)
    settings = DriftSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.log_retention_s == 30 * 24 * 3600 and settings.log_max_rows == 1_000_000
    assert settings.window_max_bytes == 64 * 2**20
    assert (settings.log_timeout_s, predlog.WRITE_TIMEOUT_S) == (30, 5)


def test_postgres_connections_are_bounded_unless_the_url_says_otherwise() -> None:
    options = connect_options("postgresql://u@db:5432/predictions", 2.5)
    assert options["options"] == "-c statement_timeout=2500 -c lock_timeout=2500"
    assert options["connect_timeout"] == 3 and options["tcp_user_timeout"] == 2500
    assert options["keepalives_idle"] == 3  # a silent network ends too, not only a slow server
    url = "postgresql://u@db/p?connect_timeout=9&options=-c%20lock_timeout%3D0"
    options = connect_options(url, 0.5)
    assert options["options"] == "-c statement_timeout=500 -c lock_timeout=500 -c lock_timeout=0"
    assert "connect_timeout" not in options  # the URL's 9 s stands


def test_a_log_that_cannot_be_reached_refuses_the_request_with_503() -> None:
    """Nothing listens on the port: the commit fails at once, as PredictionLogUnavailable."""
    sink = open_sink("postgresql://nobody@127.0.0.1:9/predictions", timeout_s=1)
    log = PredictionLog(sink)

    async def request() -> float:
        started = time.perf_counter()
        with pytest.raises(PredictionLogUnavailable, match="OperationalError"):
            await log.append([row("x")])
        return time.perf_counter() - started

    assert asyncio.run(request()) < 5


def test_a_reader_that_cannot_reach_the_log_fails_saying_so() -> None:
    with pytest.raises(PredictionLogUnavailable, match="reading the prediction log"):
        read_window("postgresql://nobody@127.0.0.1:9/predictions", "titanic", 10, 0, timeout_s=1)
