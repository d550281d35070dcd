"""The durable prediction log: every answered prediction, stored before the answer is sent.

One row per answered request: time, request id, model, version, alias, route, how many
records were predicted, their positions in the request, and the records' inputs and their
predictions (JSON arrays, in the same order). A request's row is committed before its
response leaves, so an acknowledged prediction survives a SIGTERM or a crash (kill -9) of
the service; the drift service reads the same table. A row per request, not per record:
a batch costs one insert, not one per record.

Commits are grouped: the requests answered in one turn of the event loop share one commit,
so under load a commit costs a fraction of a request. SQLite (WAL) commits on the event
loop (tens of microseconds); Postgres commits in a thread (a network round trip), while
the next requests gather for the commit after it.

    SERVE_PREDICTION_LOG=sqlite:///run/predictions.sqlite     (default; relative to the root)
    SERVE_PREDICTION_LOG=postgresql://user@host:5432/mlops     (production)
    SERVE_PREDICTION_LOG=off
"""

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from pydantic import BaseModel

from pipelines.paths import ROOT

log = logging.getLogger("services.predlog")
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
BUSY_TIMEOUT_MS = 5000  # several workers (or services) share one SQLite file: wait, not fail


class PredictionLogUnavailable(RuntimeError):
    """The log could not store a request's predictions: the request is not acknowledged."""


class Sink(Protocol):
    inline: bool  # commit on the event loop (local and fast) or in a thread (a round trip)

    def write(self, rows: list[Row]) -> None: ...

    def close(self) -> None: ...


def table_sql(key: str) -> list[str]:
    """The table and its index; `key` is the id column's type (SQLite and Postgres differ)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS predictions (
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
        "CREATE INDEX IF NOT EXISTS predictions_model_id ON predictions (model, id)",
    ]


def sqlite_path(url: str) -> Path:
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else ROOT / path


class SQLiteSink:
    """WAL mode: a commit is an append to the WAL file, which a crash of the process keeps
    (the kernel has it); `synchronous=NORMAL` skips the fsync that only power loss needs."""

    inline = True

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        for statement in table_sql("INTEGER PRIMARY KEY"):
            self.db.execute(statement)
        marks = ", ".join("?" * len(COLUMNS))
        self.insert = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({marks})"

    def write(self, rows: list[Row]) -> None:
        if len(rows) == 1:  # one statement is its own transaction: two calls fewer
            self.db.execute(self.insert, rows[0])
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(self.insert, rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class PostgresSink:
    """COPY of each group of rows in one transaction; reconnects once if the link broke."""

    inline = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.db: Any = None  # connected at the first write: a service starts while it is down

    def _connect(self) -> Any:
        import psycopg

        db = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        with db.transaction():
            for statement in table_sql("BIGSERIAL PRIMARY KEY"):
                db.execute(statement)
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

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def open_sink(url: str) -> Sink | None:
    """The sink a URL names, or None for `off`."""
    if url in ("", "off"):
        return None
    if url.startswith("sqlite:///"):
        return SQLiteSink(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresSink(url)
    raise ValueError(f"prediction log {url!r}: expected sqlite:///<path>, postgresql://... or off")


def _bytes(value: Any) -> str:
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


def score_label(prediction: dict[str, Any]) -> tuple[float | None, str | None]:
    """What the distribution metrics keep: P(positive), P(top class), the value or the
    anomaly score, the top recommendation's predicted rating, a forecast's mean or the best
    search result's similarity; the label."""
    if "results" in prediction:  # search results, best first
        return (prediction["results"][0]["score"] if prediction["results"] else None), None
    if "recommendations" in prediction:  # labelled by how the list was made
        top = prediction["recommendations"][0]["score"] if prediction["recommendations"] else None
        return top, "popular" if prediction["fallback"] else "personalised"
    if "value" in prediction:
        return prediction["value"], None
    if "forecast" in prediction:  # the mean over the horizon
        steps = prediction["forecast"]
        return (sum(steps) / len(steps) if steps else None), None
    if "probability" in prediction:
        return prediction["probability"], prediction["label"]
    if "distance" in prediction:  # segment
        return prediction["distance"], prediction["label"]
    if "score" in prediction:  # anomaly
        return prediction["score"], prediction["label"]
    if "probabilities" in prediction:
        return max(prediction["probabilities"].values()), prediction["label"]
    return None, prediction.get("label")


def record_row(answer: dict[str, Any], records: list[BaseModel], route: str, now: float) -> Row:
    """The row of a /predict answer: the valid records and their predictions (errors have
    none), with their positions in the request."""
    served = [(i, p) for i, p in enumerate(answer["predictions"]) if "error" not in p]
    return (
        now,
        answer["request_id"],
        answer["model"],
        answer["version"],
        answer["alias"],
        route,
        len(served),
        dumps([i for i, _ in served]),
        dumps([record.__dict__ for record in records]),
        dumps([p for _, p in served]),
    )


def tensor_row(
    head: tuple[float, str, str, str, str, str],
    feeds: dict[str, np.ndarray],
    predictions: list[dict[str, Any]],
) -> Row:
    """The row of an OIP v2 request: the input tensors split into records."""
    columns = {
        name: [row.tobytes() for row in array] if array.dtype == np.uint8 else array[:, 0].tolist()
        for name, array in feeds.items()
    }
    size = len(predictions)
    inputs = [{name: values[i] for name, values in columns.items()} for i in range(size)]
    return (*head, size, dumps(list(range(size))), dumps(inputs), dumps(predictions))


class PredictionLog:
    """Group commit on the event loop: `await append(rows)` returns once the rows are stored."""

    def __init__(self, sink: Sink | None, on_flush: Any = None) -> None:
        self.sink = sink
        self.on_flush = on_flush  # (predictions, seconds, error | None): the service's metrics
        self._pending: list[Row] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # shadow rows arrive from BentoML/Starlette threads

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    async def append(self, rows: list[Row]) -> None:
        """Store the rows (with whatever else arrived in this turn of the loop), then return."""
        if self.sink is None or not rows:
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending.extend(rows)
        self._waiters.append(waiter)
        if not self._busy and len(self._waiters) == 1:
            loop.call_soon(self._flush)
        await waiter

    def append_threadsafe(self, rows: list[Row]) -> None:
        """From another thread, without waiting (shadow predictions: nothing to acknowledge)."""
        if self.sink is None or not rows or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(self._enqueue, rows)

    def _enqueue(self, rows: list[Row]) -> None:
        self._pending.extend(rows)
        if not self._busy:
            self._flush()

    def _flush(self) -> None:
        if self._busy or not self._pending:
            return
        rows, waiters = self._pending, self._waiters
        self._pending, self._waiters = [], []
        assert self.sink is not None
        if self.sink.inline:
            self._done(waiters, rows, *self._write(rows))
            return
        self._busy = True
        if self._thread is None:
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "prediction-log")
        assert self._loop is not None
        future = self._loop.run_in_executor(self._thread, self._write, rows)
        future.add_done_callback(lambda f: self._done(waiters, rows, *f.result()))

    def _write(self, rows: list[Row]) -> tuple[float, Exception | None]:
        assert self.sink is not None
        start = time.perf_counter()
        try:
            with self._lock:
                self.sink.write(rows)
        except Exception as exc:  # sqlite3 / psycopg errors: the waiting requests get a 503
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


def read_window(
    url: str, model: str, records: int, since: float
) -> list[tuple[float, str, dict[str, Any], dict[str, Any]]]:
    """The latest `records` served predictions of `model` logged after `since` (unix time),
    oldest first: (ts, version, inputs, prediction). Shadow rows are not traffic."""
    query = (
        "SELECT ts, version, inputs, outputs FROM predictions "
        "WHERE model = {0} AND route <> 'shadow' AND ts >= {0} ORDER BY id DESC LIMIT {0}"
    )  # each row holds at least one record: `records` rows are always enough
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            try:
                found = db.execute(query.format("?"), (model, since, records)).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):  # nothing served yet
                    raise
                return []
    else:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as db:
            try:
                found = db.execute(query.format("%s"), (model, since, records)).fetchall()
            except psycopg.errors.UndefinedTable:  # nothing served yet
                return []
    out: list[tuple[float, str, dict[str, Any], dict[str, Any]]] = []
    for ts, version, inputs, outputs in found:  # newest first
        pairs = list(zip(loads(inputs), loads(outputs), strict=True))
        out += [(ts, version, i, o) for i, o in reversed(pairs)]
        if len(out) >= records:
            break
    return list(reversed(out[:records]))
