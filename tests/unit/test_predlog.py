"""The prediction log's group commit, rows and stores (SQLite here; Postgres in integration)."""

import asyncio
import base64
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import BaseModel

from contract.catalog import INPUT_EMBEDDING
from contract.tasks import LABEL, SCORE
from services.api import predlog
from services.api.predlog import (
    COLUMNS,
    PredictionLog,
    PredictionLogUnavailable,
    Row,
    SQLiteSink,
    dumps,
    loads,
    open_sink,
    read_window,
    record_row,
    records_of,
    table,
    tensor_row,
)
from tests.conftest import CATALOG

SEARCH, SEGMENTS = CATALOG["semantic_search"], CATALOG["customer_segments"]


class Counting(SQLiteSink):
    """A real SQLite sink that remembers how many commits it made (on the loop or not)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[int] = []
        self.waited: list[int] = []  # commits made by the thread, which waits for the lock

    def write(self, rows: list[Row]) -> None:
        super().write(rows)
        self.commits.append(len(rows))
        self.waited.append(len(rows))

    def write_now(self, rows: list[Row]) -> bool:
        stored = super().write_now(rows)
        if stored:
            self.commits.append(len(rows))
        return stored


class Failing(SQLiteSink):
    def _insert(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        raise sqlite3.OperationalError("disk I/O error")


def row(request_id: str, records: int = 1, listed: bool = False) -> Row:
    """A titanic row; its inputs a table, as record_row writes them, or `listed`: a list of
    records, as the versions before the table wrote them."""
    inputs: Any = table(["age"], [[i] for i in range(records)])
    if listed:
        inputs = [{"age": i} for i in range(records)]
    outputs = [{"value": i} for i in range(records)]
    head = (1.0, request_id, "titanic", "3", "champion", "/predict", records)
    return (*head, dumps(list(range(records))), dumps(inputs), dumps(outputs))


def stored(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY id")]


def test_requests_answered_in_one_loop_turn_share_one_commit(tmp_path: Path) -> None:
    """The first request of a turn commits at once (nothing to wait for at concurrency one);
    the others of that turn share the next commit. After a group of several (load), the next
    request waits for a group too; after a group of one, requests commit at once again."""
    sink = Counting(tmp_path / "log.sqlite")
    flushes: list[tuple[int, Exception | None]] = []
    log = PredictionLog(sink, lambda rows, seconds, error: flushes.append((rows, error)))

    async def traffic() -> None:
        await asyncio.gather(*(log.append([row(f"r{i}", records=2)]) for i in range(50)))
        # still under load: both wait for one commit (not the first at once, then the other)
        await asyncio.gather(log.append([row("a")]), log.append([row("b")]))
        await log.append([row("late")])  # a group of one: the load is over
        await log.append([row("later")])

    asyncio.run(traffic())
    assert sink.commits == [1, 49, 2, 1, 1]  # rows: one per request
    assert flushes == [(2, None), (98, None), (2, None), (1, None), (1, None)]  # predictions
    rows = stored(tmp_path / "log.sqlite")
    assert len(rows) == 54
    last = {"a", "b", "late", "later"}
    assert {r["request_id"] for r in rows} == {f"r{i}" for i in range(50)} | last
    assert set(rows[0]) == {"id", *COLUMNS}


def arriving(log: PredictionLog, count: int) -> Any:
    """Requests in flight reaching their commit one turn of the loop after another (as the
    connections of a loaded service do): request i appends i turns after the first."""

    async def request(i: int) -> None:
        for _ in range(i):
            await asyncio.sleep(0)
        await log.append([row(f"r{i}")])

    return asyncio.gather(*(request(i) for i in range(count)))


def test_a_group_waits_while_each_turn_brings_it_more_requests(tmp_path: Path) -> None:
    """Under load, a group's commit goes once a turn of the loop brings it no more requests:
    ten requests reaching their commit in ten successive turns share one commit, not ten."""
    sink = Counting(tmp_path / "log.sqlite")
    log = PredictionLog(sink)

    async def traffic() -> None:
        await asyncio.gather(*(log.append([row(f"w{i}")]) for i in range(3)))  # under load
        await arriving(log, 10)
        await arriving(log, 1)  # a turn with nothing new: the lone request commits

    asyncio.run(traffic())
    assert sink.commits == [1, 2, 10, 1]
    assert len(stored(tmp_path / "log.sqlite")) == 14


def test_a_group_stops_growing_at_its_size_and_age_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GROUP_MAX requests, or GROUP_WAIT_S after its first: a steady stream of requests
    cannot hold a commit (and the requests waiting for it) back."""
    sink = Counting(tmp_path / "log.sqlite")
    log = PredictionLog(sink)

    async def traffic() -> None:
        await asyncio.gather(*(log.append([row(f"w{i}")]) for i in range(3)))
        monkeypatch.setattr(predlog, "GROUP_MAX", 4)
        await arriving(log, 10)
        monkeypatch.setattr(predlog, "GROUP_MAX", 256)
        monkeypatch.setattr(predlog, "GROUP_WAIT_S", 0.0)
        await arriving(log, 10)

    asyncio.run(traffic())
    assert sink.commits[:5] == [1, 2, 4, 4, 2]  # by size
    assert sum(sink.commits[5:]) == 10 and max(sink.commits[5:]) == 1  # no wait at all


def test_a_lock_held_elsewhere_is_tried_again_without_blocking_the_loop(tmp_path: Path) -> None:
    """Another process's transaction holds the file's write lock: the commit is tried again
    shortly while the event loop goes on serving; it lands once the lock is free, with the
    rows that arrived meanwhile in the same commit."""
    sink = Counting(tmp_path / "log.sqlite")
    other = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None)
    log = PredictionLog(sink)
    ticks = 0

    async def traffic() -> None:
        nonlocal ticks
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another service's commit
        stored = asyncio.create_task(log.append([row("r1")]))
        for _ in range(20):  # the loop is free while the commit waits
            await asyncio.sleep(0.01)
            ticks += 1
        later = asyncio.create_task(log.append([row("r2")]))
        await asyncio.sleep(0.01)
        assert not stored.done() and not later.done()
        other.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(stored, later), 5)

    asyncio.run(traffic())
    assert ticks == 20 and sink.waited == [] and sink.commits == [2]
    rows = sink.db.execute("SELECT request_id FROM predictions ORDER BY id").fetchall()
    assert rows == [("r1",), ("r2",)]


def test_a_lock_held_past_the_timeout_refuses_the_requests(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "log.sqlite", timeout_s=0.1)
    other = sqlite3.connect(tmp_path / "log.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    log = PredictionLog(sink)
    with pytest.raises(PredictionLogUnavailable, match="write lock stayed taken"):
        asyncio.run(log.append([row("r1")]))
    other.execute("ROLLBACK")


def test_checkpoints_run_in_the_thread_never_on_the_loop(tmp_path: Path) -> None:
    """The loop's connection never checkpoints (milliseconds of copying and fsync); the log's
    thread does, every CHECKPOINT_ROWS rows committed."""
    sink = Counting(tmp_path / "log.sqlite")
    sink.CHECKPOINT_ROWS = 50
    threads: list[str] = []
    checkpoint = sink.maintain
    sink.maintain = lambda: (threads.append(threading.current_thread().name), checkpoint())[-1]
    log = PredictionLog(sink)

    async def traffic() -> None:
        for i in range(100):
            await log.append([row(f"r{i}", records=5)])
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)

    asyncio.run(traffic())
    assert sink.waited == [] and len(sink.commits) == 100  # every commit on the loop
    assert sink.now.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    assert len(threads) == 2 and all(name.startswith("prediction-log") for name in threads)


def test_large_rows_are_checkpointed_by_their_bytes(tmp_path: Path) -> None:
    """A few large rows (1000-record batches) fill the WAL long before CHECKPOINT_ROWS rows:
    their bytes call the checkpoint too, so the WAL file stays near its limit instead of
    growing by every row until the count is reached."""
    sink = Counting(tmp_path / "log.sqlite")
    sink.CHECKPOINT_BYTES = 2 * 2**20
    checkpoints: list[int] = []
    checkpoint = sink.maintain
    sink.maintain = lambda: (checkpoints.append(sink.unchecked_bytes), checkpoint())[-1]
    log = PredictionLog(sink)
    big = row("big", records=20_000)  # ~0.5 MB of inputs and outputs
    size = len(big[8]) + len(big[9])

    async def traffic() -> None:
        for _ in range(24):  # ~14 MB in all, 24 rows: far under CHECKPOINT_ROWS
            await log.append([big])
            while log._maintaining:  # the thread's checkpoint, before the next request
                await asyncio.sleep(0.001)

    asyncio.run(traffic())
    assert len(sink.commits) == 24 and sink.unchecked < sink.CHECKPOINT_ROWS
    # a checkpoint each time the rows since the last one reached CHECKPOINT_BYTES
    assert len(checkpoints) == 24 // -(-sink.CHECKPOINT_BYTES // size)
    assert all(sink.CHECKPOINT_BYTES <= b < sink.CHECKPOINT_BYTES + size for b in checkpoints)
    # the WAL restarts from its head after a checkpoint: it never held all 14 MB
    wal = tmp_path / "log.sqlite-wal"
    assert wal.stat().st_size < sink.CHECKPOINT_BYTES + 2 * size


def test_a_checkpoint_that_could_not_copy_everything_restarts_the_wal(tmp_path: Path) -> None:
    """Where PASSIVE leaves frames behind (a reader on an older snapshot, or commits during
    it), the WAL over its limit would never restart from its head: RESTART waits for the
    reader and copies the rest, and the next commit writes from the WAL's head again."""
    path = tmp_path / "log.sqlite"
    sink = SQLiteSink(path)
    sink.CHECKPOINT_BYTES = 2**20
    sink.RESTART_WAIT_S = 5.0  # the reader below lets go within it, however busy the machine
    big = row("big", records=20_000)
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    assert sink.write_now([big])
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM predictions").fetchall()  # holds this snapshot
    for _ in range(4):
        assert sink.write_now([big])
    frames = sink.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    threading.Timer(0.1, reader.execute, ("COMMIT",)).start()  # the reader finishes later
    sink.maintain()
    busy, _, copied = sink.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and copied == frames  # everything copied once the reader let go
    assert sink.write_now([row("next")])
    assert sink.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < frames // 4
    assert [r["request_id"] for r in stored(path)] == ["big"] * 5 + ["next"]


def test_a_restart_gives_up_rather_than_hold_the_writers(tmp_path: Path) -> None:
    """A reader that keeps its snapshot (a drift window's read) would hold every service's
    commits for as long as RESTART waited: it waits RESTART_WAIT_S, then writes go on."""
    path = tmp_path / "log.sqlite"
    sink = SQLiteSink(path)
    sink.CHECKPOINT_BYTES = 2**20
    big = row("big", records=20_000)
    reader = sqlite3.connect(path, isolation_level=None)
    assert sink.write_now([big])
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM predictions").fetchall()
    for _ in range(4):
        assert sink.write_now([big])
    started = time.perf_counter()
    sink.maintain()
    assert time.perf_counter() - started < 2.0  # not the 5 s busy timeout of the connection
    assert sink.write_now([row("next")])  # the writers were let go
    assert sink.db.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    reader.execute("COMMIT")


def test_a_failed_commit_refuses_every_waiting_request(tmp_path: Path) -> None:
    errors: list[Exception | None] = []
    log = PredictionLog(Failing(tmp_path / "log.sqlite"), lambda r, s, error: errors.append(error))

    async def traffic() -> list[Any]:
        return await asyncio.gather(
            *(log.append([row(f"r{i}")]) for i in range(3)), return_exceptions=True
        )

    outcomes = asyncio.run(traffic())
    assert all(isinstance(o, PredictionLogUnavailable) for o in outcomes)
    assert "disk I/O error" in str(outcomes[0])
    # two commits failed, each counted once: the first request's, then the two others'
    assert len(errors) == 2 and all(isinstance(e, sqlite3.OperationalError) for e in errors)


def test_a_cancelled_request_does_not_break_the_group(tmp_path: Path) -> None:
    sink = Counting(tmp_path / "log.sqlite")
    log = PredictionLog(sink)

    async def traffic() -> None:
        gone = asyncio.ensure_future(log.append([row("gone")]))
        kept = asyncio.ensure_future(log.append([row("kept")]))
        await asyncio.sleep(0)
        gone.cancel()
        await kept

    asyncio.run(traffic())
    # the client left, but its prediction was made: it is still stored
    assert [r["request_id"] for r in stored(tmp_path / "log.sqlite")] == ["gone", "kept"]


def test_shadow_rows_from_another_thread_are_stored_at_close(tmp_path: Path) -> None:
    log = PredictionLog(SQLiteSink(tmp_path / "log.sqlite"))

    async def traffic() -> None:
        await log.append([row("served")])
        await asyncio.to_thread(log.append_threadsafe, [row("shadow")])
        await log.close()

    asyncio.run(traffic())
    assert [r["request_id"] for r in stored(tmp_path / "log.sqlite")] == ["served", "shadow"]


def test_off_logs_nothing_and_unknown_urls_are_refused(tmp_path: Path) -> None:
    assert open_sink("off") is None and not PredictionLog(None).enabled
    asyncio.run(PredictionLog(None).append([row("x")]))  # no store, no error
    with pytest.raises(ValueError, match="sqlite:///<path>, postgresql://"):
        open_sink("mysql://somewhere/db")
    assert isinstance(open_sink(f"sqlite:///{tmp_path / 'a' / 'log.sqlite'}"), SQLiteSink)


class Record(BaseModel):
    age: float | None
    sex: str
    image: bytes = b""


def test_a_record_row_pairs_each_valid_record_with_its_prediction() -> None:
    answer = {
        "request_id": "abc",
        "model": "titanic",
        "version": "3",
        "alias": "champion",
        "predictions": [
            {"label": "1", "probability": 0.9},
            {"error": [{"field": "records.1.age"}]},
            {"label": "0", "probability": 0.2},
        ],
    }
    records = [Record(age=30, sex="female", image=b"\x00\xff"), Record(age=None, sex="male")]
    row = record_row(answer, records, "/predict", 10.0)
    assert row[:7] == (10.0, "abc", "titanic", "3", "champion", "/predict", 2)
    assert orjson.loads(row[7]) == [0, 2]  # positions in the request: the error has none
    pixels = base64.b64encode(b"\x00\xff").decode()
    assert orjson.loads(row[8]) == {  # a table: each name once
        "columns": ["age", "sex", "image"],
        "rows": [[30.0, "female", pixels], [None, "male", ""]],
    }
    assert records_of(orjson.loads(row[8])) == [
        {"age": 30.0, "sex": "female", "image": pixels},
        {"age": None, "sex": "male", "image": ""},
    ]
    assert orjson.loads(row[9]) == [answer["predictions"][0], answer["predictions"][2]]


def test_search_results_are_logged_by_document_id_and_score() -> None:
    results = [{"product": "B001", "text": "great coffee " * 200, "score": 0.8}]
    answer = {
        "request_id": "q1",
        "model": "semantic_search",
        "version": "2",
        "alias": "champion",
        "predictions": [{"results": results}, {"results": []}],
    }
    row = record_row(answer, [Record(age=1, sex="x"), Record(age=2, sex="y")], "/predict", 1.0)
    assert orjson.loads(row[9]) == [
        {"results": [{"product": "B001", "score": 0.8}]},
        {"results": []},
    ]
    assert answer["predictions"][0]["results"][0]["text"]  # the answer itself is untouched
    seen = SEARCH.task_kind.answered(SEARCH, orjson.loads(row[9])[0])
    assert seen == {SCORE: 0.8}  # what the drift view reads


def test_segments_are_logged_by_label_and_distance_without_their_profile() -> None:
    profile = {"segment": "segment 2", "share": 0.3, "tenure": 41.2, "contract": {"Yes": 0.6}}
    answer = {
        "request_id": "s1", "model": "customer_segments", "version": "1", "alias": "champion",
        "predictions": [{"label": "segment 2", "distance": 1.5, "profile": profile}],
    }  # fmt: skip
    row = record_row(answer, [Record(age=1, sex="x")], "/predict", 1.0)
    assert orjson.loads(row[9]) == [{"label": "segment 2", "distance": 1.5}]
    assert answer["predictions"][0]["profile"] is profile  # the answer itself is untouched
    seen = SEGMENTS.task_kind.answered(SEGMENTS, orjson.loads(row[9])[0])
    assert seen == {SCORE: 1.5, LABEL: "segment 2"}  # what the drift view reads


def test_a_tensor_row_splits_the_batch_into_records() -> None:
    feeds = {
        "age": np.array([[30.0], [40.0]], np.float32),
        "sex": np.array([["male"], ["female"]], object),
        "image": np.zeros((2, 2, 2), np.uint8),
    }
    head = (1.0, "id", "m", "1", "champion", "/v2/infer")
    row = tensor_row(head, feeds, [{"value": 1.0}, {"value": 2.0}])
    assert row[6] == 2 and orjson.loads(row[7]) == [0, 1]
    inputs = orjson.loads(row[8])
    assert inputs["columns"] == ["age", "sex", "image"]
    assert records_of(inputs)[1] == {"age": 40.0, "sex": "female", "image": "AAAAAA=="}


def test_rows_keep_what_the_drift_view_reads_of_the_outputs_beside_the_inputs() -> None:
    feeds = {"image": np.zeros((2, 2, 2), np.uint8)}
    head = (1.0, "id", "m", "1", "champion", "/v2/infer")
    drift = [{INPUT_EMBEDDING: [0.5, 1, 2, 3]}, {INPUT_EMBEDDING: [4, 5, 6, 7]}]
    inputs = records_of(orjson.loads(tensor_row(head, feeds, [{}, {}], drift)[8]))
    assert [r[INPUT_EMBEDDING] for r in inputs] == [[0.5, 1, 2, 3], [4, 5, 6, 7]]
    answer = {
        "request_id": "r", "model": "m", "version": "1", "alias": "champion",
        "predictions": [{"value": 1.0}],
    }  # fmt: skip
    row = record_row(answer, [Record(age=1, sex="x")], "/predict", 1.0, 0, drift[:1])
    (logged,) = records_of(orjson.loads(row[8]))
    assert logged == {"age": 1, "sex": "x", "image": "", INPUT_EMBEDDING: [0.5, 1, 2, 3]}


def test_the_window_is_the_latest_records_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    sink = SQLiteSink(path)
    shadow = (*row("s", 1)[:5], "shadow", *row("s", 1)[6:])
    other = (*row("o", 1)[:2], "churn", *row("o", 1)[3:])
    sink.write([row("a", records=3, listed=True), shadow, other, row("b", records=2)])
    found = read_window(f"sqlite:///{path}", "titanic", 4, since=0)
    # b's two records, then the last two of a (an earlier version's list of records): shadow
    # rows and other models are not traffic
    assert [(i["age"], o["value"]) for _, _, i, o in found] == [(1, 1), (2, 2), (0, 0), (1, 1)]
    assert read_window(f"sqlite:///{path}", "titanic", 10, since=2.0) == []
    assert read_window(f"sqlite:///{tmp_path / 'none.sqlite'}", "titanic", 10, since=0) == []


def test_strings_orjson_refuses_are_logged_as_they_came() -> None:
    """A lone surrogate is valid JSON and a valid str: the log must not turn it into a 500."""
    text = dumps([{"Street": "\udbf3x", "image": b"\x01"}])
    assert text == '[{"Street": "\\udbf3x", "image": "AQ=="}]'
    assert loads(text) == [{"Street": "\udbf3x", "image": "AQ=="}]  # the drift window reads it
