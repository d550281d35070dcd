"""The durable prediction log: every answered prediction, stored before the answer is sent.

One row per answered request: time, request id, model, version, alias, route, how many
records were predicted, their positions in the request, the records' inputs (a `table`: the
field names once, a row of values per record) and their predictions (a JSON array, in the
same order). A request's row is committed before its
response leaves, so an acknowledged prediction survives a SIGTERM or a crash (kill -9) of
the service; the drift service reads the same table. A row per request, not per record:
a batch costs one insert, not one per record.

Commits are grouped: the requests in flight share one commit, so under load a commit costs a
fraction of a request. A group's commit waits while each turn of the event loop brings it
more requests (at most GROUP_WAIT_S after its first, or GROUP_MAX requests), and goes as soon
as a turn brings none: the loop never idles for it. SQLite (WAL) commits on the event
loop (a hundred microseconds) when the file's write lock is free, and otherwise tries again
a fraction of a millisecond later, so another process's commit never stalls this one's
loop; the WAL's checkpoints (copying it into the database, milliseconds) run in a thread,
never on the loop. Postgres commits in a thread (a network round trip), while the next requests
gather for the commit after it.

    SERVE_PREDICTION_LOG=sqlite:///run/predictions.sqlite     (default; relative to the root)
    SERVE_PREDICTION_LOG=postgresql://user@host:5432/mlops     (production)
    SERVE_PREDICTION_LOG=off

Bounded: a request's inputs over SERVE_PREDICTION_LOG_MAX_BYTES are stored as a marker per
record (outputs kept); Postgres connections give up after their timeout (connect, statement,
lock wait), so a stuck database is a 503, not a hang; the drift service reads a window
bounded in records and bytes, and deletes by age and count (`prune`) in short batches,
since the services' database role may not DELETE (infra/postgres/init.sql).
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from pydantic import BaseModel

from contract.audio import Recording
from contract.feeds import Photo
from contract.paths import ROOT

log = logging.getLogger("services.api.predlog")
Row = tuple[float, str, str, str, str, str, int, str, str, str]
COLUMNS = (
    "ts",
    "request_id",
    "model",
    "version",
    "alias",
    "route",
    "records",
    "positions",
    "inputs",
    "outputs",
)
DEFAULT_URL = "sqlite:///run/predictions.sqlite"  # the services' and the drift service's
# A commit waits this long at most (SERVE_PREDICTION_LOG_TIMEOUT_S): on SQLite, the busy
# timeout, as several workers (or services) share one file: wait, not fail
WRITE_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # the drift service's reads and deletes (DRIFT_LOG_TIMEOUT_S)
# a request's inputs + outputs JSON (SERVE_PREDICTION_LOG_MAX_BYTES): 1000 records of ~1 KiB
MAX_ROW_BYTES = 2**20
WINDOW_MAX_BYTES = 64 * 2**20  # the JSON a drift window reads (DRIFT_WINDOW_MAX_BYTES)
PRUNE_BATCH = 5000  # rows per DELETE: each is a short transaction, whatever the backlog
WAL_LIMIT_BYTES = 64 * 2**20  # SQLite's WAL file: checkpointed past this, truncated back to it
FETCH = 200  # rows per round trip (Postgres) or fetchmany (SQLite) of the drift reader
# A record whose inputs were over the cap: {TRUNCATED: its JSON size}. No request field can
# carry this name (pydantic fields never start with an underscore)
TRUNCATED = "_truncated"
MARKED = f'[{{"{TRUNCATED}":'  # how a row's inputs JSON starts once its records are markers


class PredictionLogUnavailable(RuntimeError):
    """The log could not store a request's predictions: the request is not acknowledged."""


class Sink(Protocol):
    inline: bool  # commit with write_now() on the event loop (local and fast), or in a thread
    timeout_s: float  # how long a commit may wait for the store

    def write(self, rows: list[Row]) -> None:
        """Commit, waiting for the store as long as its timeout allows (in a thread)."""

    def write_now(self, rows: list[Row]) -> bool:
        """Commit without waiting: False, with nothing written, where the store is busy
        (another process's commit holds the lock)."""

    def maintain(self) -> None:
        """Housekeeping that may wait (in the thread), asked for by needs_maintenance."""

    @property
    def needs_maintenance(self) -> bool: ...

    def close(self) -> None: ...


def table_sql(key: str) -> dict[str, str]:
    """The table and its indexes, by name; `key` is the id column's type (SQLite and Postgres
    differ). `make manifests` writes them into infra/postgres/init.sql for Postgres, whose
    model services' role may not run DDL."""
    return {
        "predictions": f"""CREATE TABLE IF NOT EXISTS predictions (
            id {key},
            ts DOUBLE PRECISION NOT NULL,
            request_id TEXT NOT NULL,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            alias TEXT NOT NULL,
            route TEXT NOT NULL,
            records INTEGER NOT NULL,
            positions TEXT NOT NULL,
            inputs TEXT NOT NULL,
            outputs TEXT NOT NULL
        )""",
        # the drift window: a model's latest rows. Retention needs no index of its own: it
        # deletes by id (commit order), the age's boundary found by a walk from the oldest
        # row (`prune`); a second index cost every commit a page (a third of its writes)
        "predictions_model_id": (
            "CREATE INDEX IF NOT EXISTS predictions_model_id ON predictions (model, id)"
        ),
        # feedback names a prediction by its request id (services/api/feedback.py)
        "predictions_request_id": (
            "CREATE INDEX IF NOT EXISTS predictions_request_id ON predictions (request_id)"
        ),
        # the true outcomes sent back, one per served record: joined to the log, not copied
        "feedback": """CREATE TABLE IF NOT EXISTS feedback (
            model TEXT NOT NULL,
            request_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            outcome TEXT NOT NULL,
            PRIMARY KEY (model, request_id, position)
        )""",
        # a model's labelled window, by the outcomes' arrival
        "feedback_model_ts": "CREATE INDEX IF NOT EXISTS feedback_model_ts ON feedback (model, ts)",
    }


def connect_options(url: str, timeout_s: float) -> dict[str, Any]:
    """libpq parameters that bound a connection by `timeout_s`: connecting, any statement,
    any lock wait, and a network gone silent (keepalives, unacknowledged data). What the
    URL sets itself wins (its `-c` options come later)."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(url)
    ms = max(1, round(timeout_s * 1000))
    seconds = math.ceil(timeout_s)
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, seconds),  # libpq's least
        "keepalives_idle": seconds,
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
    }
    options = f"-c statement_timeout={ms} -c lock_timeout={ms} {given.get('options', '')}"
    return {k: v for k, v in defaults.items() if k not in given} | {"options": options.strip()}


def connect_postgres(url: str, timeout_s: float, **kwargs: Any) -> Any:
    """A connection that gives up after `timeout_s` (connect_options)."""
    import psycopg

    return psycopg.connect(url, **connect_options(url, timeout_s), **kwargs)


def create_table(db: Any) -> None:
    """The table and its indexes, on a fresh database. Where init.sql made the table (the
    services' role may not create it), no DDL is attempted."""
    import psycopg

    ddl = table_sql("BIGSERIAL PRIMARY KEY")
    query = "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL"
    missing = {name for (name,) in db.execute(query, (list(ddl),))}
    if "predictions" not in missing:
        if missing:  # an older table: its owner adds them (CREATE INDEX CONCURRENTLY)
            log.warning("prediction log: %s missing: see infra/postgres/init.sql", sorted(missing))
        return
    try:
        with db.transaction():
            for name, statement in ddl.items():
                if name in missing:
                    db.execute(statement)
    except psycopg.errors.InsufficientPrivilege:  # fine if another one made it meanwhile
        (table,) = db.execute("SELECT to_regclass('predictions')").fetchone()
        if table is None:
            raise


def sqlite_path(url: str) -> Path:
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else ROOT / path


class SQLiteSink:
    """WAL mode: a commit is an append to the WAL file, which a crash of the process keeps
    (the kernel has it); `synchronous=NORMAL` skips the fsync that only power loss needs.

    Two connections: the event loop's never waits (busy timeout 0: PredictionLog tries
    again shortly while another process holds the lock) and never checkpoints (the copy of
    the WAL into the database, with its fsync, took up to 40 ms on the loop with 13 services
    sharing the file); the thread's checkpoints every CHECKPOINT_ROWS rows or CHECKPOINT_BYTES
    of rows' JSON, whichever comes first (PASSIVE: it never blocks a writer), which also
    bounds the WAL file, and writes at close. Rows alone bounded the WAL by their count only:
    2000 rows of 1000-review batches (470 KB each) were a 940 MB WAL."""

    inline = True
    CHECKPOINT_ROWS = 2000
    CHECKPOINT_BYTES = WAL_LIMIT_BYTES
    RESTART_WAIT_S = 0.05  # a RESTART checkpoint's wait for readers, new writers held meanwhile

    def __init__(self, path: Path, timeout_s: float = WRITE_TIMEOUT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.db = self._connect(path, timeout_s)
        for statement in table_sql("INTEGER PRIMARY KEY").values():
            self.db.execute(statement)
        self.db.execute("DROP INDEX IF EXISTS predictions_ts")  # an earlier version's file
        self.now = self._connect(path, 0)
        self.now.execute("PRAGMA wal_autocheckpoint = 0")
        marks = ", ".join("?" * len(COLUMNS))
        self.insert = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({marks})"
        self.unchecked = 0  # rows committed on the loop since the last checkpoint
        self.unchecked_bytes = 0  # and their inputs' and outputs' JSON
        (self.page_size,) = self.db.execute("PRAGMA page_size").fetchone()

    @staticmethod
    def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {round(timeout_s * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")  # the WAL file, once reset
        return db

    def _insert(self, db: sqlite3.Connection, rows: list[Row]) -> None:
        if len(rows) == 1:  # one statement is its own transaction: two calls fewer
            db.execute(self.insert, rows[0])
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(self.insert, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def write(self, rows: list[Row]) -> None:
        self._insert(self.db, rows)

    def write_now(self, rows: list[Row]) -> bool:
        try:
            self._insert(self.now, rows)
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
            return False  # another connection holds the lock: PredictionLog tries again
        self.unchecked += len(rows)
        self.unchecked_bytes += sum(len(row[8]) + len(row[9]) for row in rows)
        return True

    @property
    def needs_maintenance(self) -> bool:
        return (
            self.unchecked >= self.CHECKPOINT_ROWS or self.unchecked_bytes >= self.CHECKPOINT_BYTES
        )

    def maintain(self) -> None:
        """PASSIVE first: it copies what it can and blocks nobody. A WAL restarts from its head
        only once every frame is copied, which PASSIVE misses while commits keep coming during
        it or a reader keeps an older snapshot (large rows: 17 MB of a 2 MB limit under a busy
        test run). Past the limit, RESTART: it holds new writers while it waits for readers,
        so it waits RESTART_WAIT_S at most (a drift window's read takes seconds, and the
        services' commits must not), and gives up until the next checkpoint."""
        self.unchecked = self.unchecked_bytes = 0
        busy, frames, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames * self.page_size > self.CHECKPOINT_BYTES and (busy or copied < frames):
            self.db.execute(f"PRAGMA busy_timeout = {round(self.RESTART_WAIT_S * 1000)}")
            try:
                self.db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                self.db.execute(f"PRAGMA busy_timeout = {round(self.timeout_s * 1000)}")

    def close(self) -> None:
        self.now.close()
        self.db.close()


class PostgresSink:
    """COPY of each group of rows in one transaction; reconnects once if the link broke. A
    commit slower than `timeout_s` (a lock held, the server stuck) fails: the requests get a
    503 instead of waiting."""

    inline = False
    needs_maintenance = False

    def __init__(self, url: str, timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.db: Any = None  # connected at the first write: a service starts while it is down

    def _connect(self) -> Any:
        db = connect_postgres(self.url, self.timeout_s, autocommit=True)
        try:
            create_table(db)
        except BaseException:
            db.close()
            raise
        return db

    def write(self, rows: list[Row]) -> None:
        import psycopg

        if self.db is None or self.db.closed or self.db.broken:
            self.db = self._connect()
        try:
            statement = f"COPY predictions ({', '.join(COLUMNS)}) FROM STDIN"
            with self.db.transaction(), self.db.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.OperationalError:
            self.db.close()  # the next group reconnects
            raise

    def write_now(self, rows: list[Row]) -> bool:
        return False  # a round trip: always in the thread

    def maintain(self) -> None:
        pass

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def open_sink(url: str, timeout_s: float = WRITE_TIMEOUT_S) -> Sink | None:
    """The sink a URL names, or None for `off`; a commit gives up after `timeout_s`."""
    if url in ("", "off"):
        return None
    if url.startswith("sqlite:///"):
        return SQLiteSink(sqlite_path(url), timeout_s)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSink(url, timeout_s)
    raise ValueError(f"prediction log {url!r}: expected sqlite:///<path>, postgresql://... or off")


def _bytes(value: Any) -> str | dict[str, float]:
    if isinstance(value, Photo | Recording):  # a picture's or a recording's drift summary
        return value.summary  # (contract.feeds.photo_summary, contract.audio.recording_summary)
    if isinstance(value, bytes):  # images: the raw pixels, as base64
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot log a {type(value).__name__}")


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_bytes, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # a lone surrogate ("\\udbf3" is valid JSON): escaped, as it came in
        return json.dumps(value, default=_bytes)


def loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # what dumps escaped for orjson (lone surrogates)
        return json.loads(text)


def logged(prediction: dict[str, Any]) -> dict[str, Any]:
    """A prediction as stored, without what the version that answered holds anyway: search
    results by document id and score, without the document's text (a copy of the corpus,
    ~10 KB a query, whose commit took longer than the rest of the request's work but the
    encoding); a segment by its label and distance, without its profile (the segment's
    share and feature distributions: 590 of the 650 KB a 1000-record customer_segments
    batch logged, written, checkpointed and read by every drift window)."""
    if "results" in prediction:
        kept = [{k: v for k, v in r.items() if k != "text"} for r in prediction["results"]]
        return prediction | {"results": kept}
    if "profile" in prediction:
        return {k: v for k, v in prediction.items() if k != "profile"}
    return prediction


def record_row(
    answer: dict[str, Any],
    records: list[BaseModel],
    route: str,
    now: float,
    max_bytes: int = 0,
    drift: list[dict[str, Any]] | None = None,
) -> Row:
    """The row of a /predict answer: the valid records (as a `table`) and their predictions
    (errors have none), with their positions in the request; records past `max_bytes` (0: no
    cap) as markers, sized here from the records (`capped` would parse the JSON back: 17 ms
    of a 1000-record energy_forecast batch's 5 MB). `drift`: what each record's drift view
    reads of the outputs, kept beside its fields (LoadedModel.drift_inputs)."""
    served = [(i, logged(p)) for i, p in enumerate(answer["predictions"]) if "error" not in p]
    inputs = [record.__dict__ for record in records]
    if drift and any(drift):
        inputs = [fields | extra for fields, extra in zip(inputs, drift, strict=True)]
    outputs_json = dumps([p for _, p in served])
    inputs_json = _inputs_json(inputs, outputs_json, max_bytes, answer["request_id"])
    return (
        now,
        answer["request_id"],
        answer["model"],
        answer["version"],
        answer["alias"],
        route,
        len(served),
        dumps([i for i, _ in served]),
        inputs_json,
        outputs_json,
    )


def table(columns: list[str], rows: list[Any]) -> dict[str, Any]:
    """Records as a row stores them: the field names once, then each record's values in that
    order. A list of records repeats every name in every record: a 1000-record batch of
    churn was 431 KB of JSON, as a table 137 KB (house_prices' 1.5 MB: 0.5 MB, under the
    cap), which each commit, WAL checkpoint and drift read carries."""
    return {"columns": columns, "rows": rows}


def records_of(inputs: Any) -> list[dict[str, Any]]:
    """A row's parsed inputs as records: a `table`, or a list of records (markers, and the
    rows of versions before the table)."""
    if isinstance(inputs, dict):
        names = inputs["columns"]
        return [dict(zip(names, values, strict=True)) for values in inputs["rows"]]
    records: list[dict[str, Any]] = inputs
    return records


def tensor_row(
    head: tuple[float, str, str, str, str, str],
    feeds: dict[str, np.ndarray],
    predictions: list[dict[str, Any]],
    drift: list[dict[str, Any]] | None = None,
) -> Row:
    """The row of an OIP v2 request: the input tensors as a table of records, with what
    each record's drift view reads of the outputs (`drift`, as record_row)."""
    names = list(feeds)
    columns = [
        [row.tobytes() for row in array] if array.dtype == np.uint8 else array[:, 0].tolist()
        for array in feeds.values()
    ]
    size = len(predictions)
    drift = drift or []
    for name in sorted({name for found in drift for name in found}):
        names.append(name)
        columns.append([found.get(name) for found in drift])
    inputs = table(names, list(zip(*columns, strict=True)))
    stored = [logged(p) for p in predictions]
    return (*head, size, dumps(list(range(size))), dumps(inputs), dumps(stored))


def _over(inputs_json: str, outputs_json: str, max_bytes: int) -> bool:
    return bool(max_bytes) and len(inputs_json) + len(outputs_json) > max_bytes


def _inputs_json(
    inputs: list[dict[str, Any]], outputs_json: str, max_bytes: int, request_id: str
) -> str:
    """The records' JSON as a table, or their markers where it and the outputs' are over
    `max_bytes`. The records of one request are instances of one pydantic model, whose
    fields (extra ones forbidden) come in one order: the first record's names are all's."""
    names = list(inputs[0]) if inputs else []
    inputs_json = dumps(table(names, [tuple(record.values()) for record in inputs]))
    if _over(inputs_json, outputs_json, max_bytes):
        return _markers(inputs, request_id)
    return inputs_json


def _markers(records: list[dict[str, Any]], request_id: str) -> str:
    """The inputs JSON of records over the cap: {TRUNCATED: each record's JSON size}."""
    log.info("prediction log: request %s: inputs over the cap, stored as markers", request_id)
    return dumps([{TRUNCATED: len(dumps(record))} for record in records])


def capped(row: Row, max_bytes: int) -> Row:
    """The row, or where its inputs and outputs exceed `max_bytes` of JSON (0: no cap), the
    row with each record's inputs replaced by {TRUNCATED: their size}: the outputs are kept,
    and the drift window skips those records. A row whose records are markers already
    (record_row marks them from the records, without parsing the JSON back) stays as it is:
    its outputs alone may be over the cap, and the markers keep the records' own sizes."""
    if not _over(row[8], row[9], max_bytes) or row[8].startswith(MARKED):
        return row
    return (*row[:8], _markers(records_of(loads(row[8])), row[1]), row[9])


# A group's commit waits for more requests (PredictionLog._flush) at most this long after its
# first request, or until it holds this many: a steady stream cannot hold it back
GROUP_WAIT_S = 0.005
GROUP_MAX = 256

# Pauses between tries of a commit on the loop while another process holds the lock (~0.1 ms
# per commit): short first, since the lock is usually free again at once
RETRY_S = (0.0002, 0.0005, 0.001, 0.002, 0.005)


class PredictionLog:
    """Group commit on the event loop: `await append(rows)` returns once the rows are stored."""

    def __init__(
        self, sink: Sink | None, on_flush: Any = None, max_bytes: int = MAX_ROW_BYTES
    ) -> None:
        self.sink = sink
        self.on_flush = on_flush  # (predictions, seconds, error | None): the service's metrics
        self.max_bytes = max_bytes  # a row's inputs + outputs JSON; more: inputs as markers
        self._pending: list[Row] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._busy = False
        self._turn = False  # a commit went at once in this turn of the loop
        self._solo = True  # the last group commit carried one request: commit at once
        self._opened = 0.0  # when the pending group's first request came (perf_counter)
        self._seen = 0  # the group's requests when _flush last looked
        self._maintaining = False  # a maintenance job is queued or running in the thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # shadow rows arrive from BentoML/Starlette threads

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    async def append(self, rows: list[Row]) -> None:
        """Store the rows (with the other requests in flight), then return.

        While requests come one at a time (the last group commit carried one), the first
        request of a turn commits at once, without waiting for the next turn (a task's
        suspension and two turns: ~30 us of a request at concurrency one); those that run
        later in the same turn came with it (their connections were read in the same poll),
        so they wait and share the next commit. Under load (groups of several) every request
        waits for the group, which grows while the loop's turns bring it more (_flush)."""
        if self.sink is None or not rows:
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        waiter = loop.create_future()
        alone = self._solo and not (self._busy or self._pending or self._turn)
        if alone and self.sink.inline:
            self._turn = True
            loop.call_soon(self._next_turn)
            self._write_now(self._capped(rows), [waiter], time.perf_counter(), 0)
            await waiter  # done unless another process held the lock (then: retried)
            return
        self._pending.extend(rows)
        self._waiters.append(waiter)
        if not self._busy and len(self._waiters) == 1:
            self._opened = time.perf_counter()
            loop.call_soon(self._flush)
        await waiter

    def _next_turn(self) -> None:
        self._turn = False

    def _growing(self, waiting: int) -> bool:
        """The group gained requests since the last look, and may wait for more."""
        return (
            waiting != self._seen
            and waiting < GROUP_MAX
            and time.perf_counter() - self._opened < GROUP_WAIT_S
        )

    def append_threadsafe(self, rows: list[Row]) -> None:
        """From another thread, without waiting (shadow predictions: nothing to acknowledge)."""
        if self.sink is None or not rows or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(self._enqueue, rows)

    def _enqueue(self, rows: list[Row]) -> None:
        self._pending.extend(rows)
        if not (self._busy or self._waiters):  # else a flush is due: the rows join it
            self._flush()

    def _flush(self) -> None:
        """Commit the pending rows, unless the last turn brought the group more requests
        (then look again after the next turn). Every request in flight reaches its commit
        in a turn or two, so under load one commit carries them all: with 16 connections,
        groups of 16 rows instead of ~5.5, a third of the commits, each ~1.6x as long; and
        the loop does each phase (parse, predict, commit, answer) for all of them in a row."""
        if self._busy or not self._pending:
            return
        assert self.sink is not None and self._loop is not None
        waiting = len(self._waiters)
        if self._growing(waiting):
            self._seen = waiting
            self._loop.call_soon(self._flush)
            return
        self._seen = 0
        rows, waiters = self._pending, self._waiters
        self._pending, self._waiters = [], []
        self._solo = len(waiters) <= 1
        if self.sink.inline:
            self._write_now(self._capped(rows), waiters, time.perf_counter(), 0)
            return
        self._busy = True
        future = self._loop.run_in_executor(self._executor(), self._write, rows)
        future.add_done_callback(lambda f: self._done(waiters, rows, *f.result()))

    def _write_now(
        self, rows: list[Row], waiters: list[asyncio.Future[None]], start: float, tries: int
    ) -> None:
        """Commit on the loop; while another process holds the lock, try again a little later
        (the loop serves meanwhile, and the rows that arrive join this commit) until the
        timeout. A thread would wait in SQLite's busy handler instead, whose sleeps (1, 2, 5,
        10 ms...) and the GIL's hand-overs cost a request ~8 ms on average under load."""
        assert self.sink is not None and self._loop is not None
        try:
            stored = self.sink.write_now(rows)
        except Exception as exc:  # sqlite3 errors: the requests get a 503
            self._done(waiters, rows, time.perf_counter() - start, exc)
            return
        waited = time.perf_counter() - start
        if stored:
            self._done(waiters, rows, waited, None)
            if self.sink.needs_maintenance and not self._maintaining:
                self._maintaining = True  # one job at a time, however many commits pass
                self._loop.run_in_executor(self._executor(), self._maintain)
        elif waited > self.sink.timeout_s:
            locked = TimeoutError(f"the log's write lock stayed taken for {waited:.1f} s")
            self._done(waiters, rows, waited, locked)
        else:
            self._busy = True  # what arrives meanwhile waits for this commit
            delay = RETRY_S[min(tries, len(RETRY_S) - 1)]
            self._loop.call_later(delay, self._retry, rows, waiters, start, tries + 1)

    def _retry(
        self, rows: list[Row], waiters: list[asyncio.Future[None]], start: float, tries: int
    ) -> None:
        rows, waiters = rows + self._capped(self._pending), waiters + self._waiters
        self._pending, self._waiters = [], []
        self._write_now(rows, waiters, start, tries)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "prediction-log")
        return self._thread

    def _capped(self, rows: list[Row]) -> list[Row]:
        return [capped(row, self.max_bytes) for row in rows]

    def _maintain(self) -> None:
        assert self.sink is not None
        try:
            with self._lock:
                self.sink.maintain()
        except Exception as exc:  # the next one tries again; writes are unaffected
            log.warning("prediction log: maintenance failed: %s", exc)
        finally:
            self._maintaining = False

    def _write(self, rows: list[Row]) -> tuple[float, Exception | None]:
        assert self.sink is not None
        start = time.perf_counter()
        try:
            rows = self._capped(rows)
            with self._lock:
                self.sink.write(rows)
        except Exception as exc:  # sqlite3 / psycopg errors, timeouts: the requests get a 503
            return time.perf_counter() - start, exc
        return time.perf_counter() - start, None

    def _done(
        self,
        waiters: list[asyncio.Future[None]],
        rows: list[Row],
        seconds: float,
        error: Exception | None,
    ) -> None:
        self._busy = False
        if self.on_flush is not None:
            self.on_flush(sum(row[6] for row in rows), seconds, error)
        if error is not None:
            log.error("prediction log: %d rows not stored: %s", len(rows), error)
        for waiter in waiters:
            if waiter.done():  # the request was cancelled (client gone): nothing to tell
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(PredictionLogUnavailable(f"{type(error).__name__}: {error}"))
        if self._pending:
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    async def close(self) -> None:
        """Store what is still pending (shadow rows), then close the store."""
        if self.sink is None:
            return
        while self._busy:
            await asyncio.sleep(0.01)
        if self._pending:
            rows, self._pending = self._pending, []
            self._write(rows)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        self.sink.close()


Window = list[tuple[float, str, dict[str, Any], dict[str, Any]]]
Rows = Generator[tuple[float, str, str, str], None, None]  # ts, version, inputs, outputs
WINDOW_QUERY = (
    "SELECT ts, version, inputs, outputs FROM predictions "
    "WHERE model = {0} AND route <> 'shadow' AND ts >= {0} ORDER BY id DESC"
)


def _sqlite_rows(path: Path, params: tuple[Any, ...], timeout_s: float) -> Rows:
    if not path.exists():  # nothing served yet
        return
    with contextlib.closing(
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
    ) as db:
        try:
            cursor = db.execute(WINDOW_QUERY.format("?"), params)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # nothing served yet
                return
            raise PredictionLogUnavailable(f"reading the prediction log: {exc}") from exc
        while batch := cursor.fetchmany(FETCH):
            yield from batch


def _postgres_rows(url: str, params: tuple[Any, ...], timeout_s: float) -> Rows:
    """Through a server-side cursor: FETCH rows at a time, as they are consumed."""
    import psycopg

    try:
        with connect_postgres(url, timeout_s) as db:
            (table,) = db.execute("SELECT to_regclass('predictions')").fetchone()
            if table is None:  # nothing served yet
                return
            with db.cursor(name="drift_window") as cursor:
                cursor.execute(WINDOW_QUERY.format("%s"), params)
                while batch := cursor.fetchmany(FETCH):
                    yield from batch
    except psycopg.OperationalError as exc:  # unreachable, or a statement or lock timeout
        raise PredictionLogUnavailable(
            f"reading the prediction log: {type(exc).__name__}: {exc}"
        ) from exc


def _newest_records(
    rows: Iterable[tuple[float, str, str, str]], records: int, max_bytes: int
) -> Window:
    """Records from rows newest first, until `records` of them or `max_bytes` of JSON."""
    out: Window = []
    used = skipped = 0
    for ts, version, inputs, outputs in rows:
        used += len(inputs) + len(outputs)
        if used > max_bytes:
            log.info("drift window: %d bytes read, %d records kept: at the budget", used, len(out))
            break
        pairs = list(zip(records_of(loads(inputs)), loads(outputs), strict=True))
        kept = [(ts, version, i, o) for i, o in reversed(pairs) if TRUNCATED not in i]
        skipped += len(pairs) - len(kept)
        out += kept
        if len(out) >= records:
            break
    if skipped:
        log.info("drift window: %d records skipped: their inputs were over the cap", skipped)
    return out[:records]


def read_window(
    url: str,
    model: str,
    records: int,
    since: float,
    max_bytes: int = WINDOW_MAX_BYTES,
    timeout_s: float = READ_TIMEOUT_S,
) -> Window:
    """The latest `records` served predictions of `model` logged after `since` (unix time),
    oldest first: (ts, version, inputs, prediction). Rows are read newest first and streamed,
    up to `max_bytes` of JSON; shadow rows are not traffic, and records whose inputs were over
    the cap have none to compare. PredictionLogUnavailable: unreachable or too slow."""
    params = (model, since)
    if url.startswith("sqlite:///"):
        rows = _sqlite_rows(sqlite_path(url), params, timeout_s)
    else:
        rows = _postgres_rows(url, params, timeout_s)
    with contextlib.closing(rows):  # stopping early closes the cursor and the connection
        return list(reversed(_newest_records(rows, records, max_bytes)))


def _delete_below(db: Any, mark: str, below: int, batch: int) -> int:
    """DELETE the rows whose id is below `below`, oldest first, `batch` rows per statement
    (each its own transaction); the number deleted."""
    statement = (
        f"DELETE FROM predictions WHERE id IN (SELECT id FROM predictions "
        f"WHERE id < {mark} ORDER BY id LIMIT {mark})"
    )
    total = 0
    while True:
        started = time.perf_counter()
        deleted = int(db.execute(statement, (below, batch)).rowcount)
        total += deleted
        if deleted < batch:
            return total
        time.sleep(time.perf_counter() - started)  # as long again: the writers get their turn


def _age_boundary(db: Any, mark: str, cutoff: float) -> int | None:
    """The id of the oldest row logged at or after `cutoff`: the rows below it go. A walk of
    the primary key from the oldest row, as long as the rows to delete (no index on ts); a
    row committed late (its clock older than a row before it) waits for the next prune, and
    no row younger than the cutoff is ever below the boundary. None: nothing logged."""
    query = f"SELECT id FROM predictions WHERE ts >= {mark} ORDER BY id LIMIT 1"
    if (found := db.execute(query, (cutoff,)).fetchone()) is not None:
        return int(found[0])
    (newest,) = db.execute("SELECT max(id) FROM predictions").fetchone()
    return None if newest is None else int(newest) + 1  # every row is older


def prune(
    url: str,
    max_age_s: float,
    max_rows: int,
    *,
    now: float | None = None,
    batch: int = PRUNE_BATCH,
    timeout_s: float = READ_TIMEOUT_S,
) -> int:
    """Delete the rows older than `max_age_s` and those beyond the newest `max_rows` (0: no
    limit), in transactions of at most `batch` rows, so a backlog never holds a long lock;
    the number deleted. For the drift service: the model services may not DELETE."""
    if (not max_age_s and not max_rows) or url in ("", "off"):
        return 0
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if not path.exists():  # nothing served yet
            return 0
        # autocommit: each DELETE is its own transaction
        db: Any = sqlite3.connect(
            f"file:{path}?mode=rw", uri=True, timeout=timeout_s, isolation_level=None
        )
        mark, exists = "?", "SELECT count(*) FROM sqlite_master WHERE name = 'predictions'"
    else:
        db = connect_postgres(url, timeout_s, autocommit=True)
        mark, exists = "%s", "SELECT count(to_regclass('predictions'))"
    with contextlib.closing(db):
        if not db.execute(exists).fetchone()[0]:  # nothing served yet
            return 0
        deleted = 0
        if max_age_s:
            cutoff = (time.time() if now is None else now) - max_age_s
            if (boundary := _age_boundary(db, mark, cutoff)) is not None:
                deleted += _delete_below(db, mark, boundary, batch)
        if max_rows:  # the oldest row kept: a walk of max_rows entries of the primary key
            query = f"SELECT id FROM predictions ORDER BY id DESC LIMIT 1 OFFSET {mark}"
            if (kept := db.execute(query, (max_rows - 1,)).fetchone()) is not None:
                deleted += _delete_below(db, mark, kept[0], batch)
        return deleted
