"""True outcomes sent back for logged predictions, stored beside the prediction log.

A client that learns what really happened (the passenger survived, the house sold for
215,000, the user watched these films) sends it to the model's service (`POST /feedback`)
with the request id its answer carried and the record's position in that request. The
outcome is validated against the catalog's target (the task's `outcome`), and stored in the
`feedback` table of the prediction log's database: joined to the logged prediction by
(model, request id, position), never copied. The drift service reads the join to score each
version on labelled traffic (`read_labelled`) and prunes it with the log (`prune`).

One call's outcomes are stored together or not at all: a request id the log does not hold
(never served by this model, a shadow's, or pruned by the retention) or a position it did
not answer is a 404; an outcome already stored for a record is a duplicate (the same
value: nothing to do) or a conflict (another value: 409, the first one stands). Late
arrivals are fine as long as the prediction is still in the log.
"""

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.api.predlog import (
    PRUNE_BATCH,
    READ_TIMEOUT_S,
    TRUNCATED,
    WRITE_TIMEOUT_S,
    PredictionLogUnavailable,
    connect_postgres,
    loads,
    records_of,
    sqlite_path,
)

Item = tuple[str, int, str]  # request id, position, the outcome's JSON
STORED, DUPLICATE = "stored", "duplicate"


class UnknownPrediction(LookupError):
    """Records the log holds no prediction for: [{request_id, position, problem}]."""

    def __init__(self, missing: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(missing)} record(s) without a logged prediction")
        self.missing = missing


class ConflictingOutcome(ValueError):
    """Records whose stored outcome differs from the one sent: [{request_id, position, ...}]."""

    def __init__(self, conflicts: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(conflicts)} record(s) already have another outcome")
        self.conflicts = conflicts


@contextlib.contextmanager
def _transaction(url: str, timeout_s: float) -> Iterator[tuple[Any, str]]:
    """A connection in one write transaction, and its parameter mark."""
    if url.startswith("sqlite:///"):
        db: Any = sqlite3.connect(sqlite_path(url), timeout=timeout_s, isolation_level=None)
        with contextlib.closing(db):
            db.execute("BEGIN IMMEDIATE")  # the write lock first: no upgrade deadlock
            try:
                yield db, "?"
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        return
    with connect_postgres(url, timeout_s) as db, db.transaction():
        yield db, "%s"


def _marks(mark: str, count: int) -> str:
    return ", ".join([mark] * count)


def _served(db: Any, mark: str, model: str, ids: list[str]) -> dict[str, set[int]]:
    """The positions each request id was answered for by `model` (not as a shadow)."""
    query = (
        f"SELECT request_id, positions FROM predictions WHERE model = {mark} "
        f"AND route <> 'shadow' AND request_id IN ({_marks(mark, len(ids))})"
    )
    served: dict[str, set[int]] = {}
    for request_id, positions in db.execute(query, (model, *ids)):
        served.setdefault(request_id, set()).update(loads(positions))
    return served


def _stored(db: Any, mark: str, model: str, ids: list[str]) -> dict[tuple[str, int], str]:
    query = (
        f"SELECT request_id, position, outcome FROM feedback WHERE model = {mark} "
        f"AND request_id IN ({_marks(mark, len(ids))})"
    )
    return {(r, int(p)): o for r, p, o in db.execute(query, (model, *ids))}


def _missing(items: list[Item], served: dict[str, set[int]]) -> list[dict[str, Any]]:
    missing = []
    for request_id, position, _ in items:
        if request_id not in served:
            problem = "no prediction of this model has this request id (or it was pruned)"
        elif position not in served[request_id]:
            problem = f"no record at this position; answered: {sorted(served[request_id])}"
        else:
            continue
        missing.append({"request_id": request_id, "position": position, "problem": problem})
    return missing


def store(
    url: str, model: str, items: list[Item], now: float | None = None,
    timeout_s: float = WRITE_TIMEOUT_S,
) -> list[str]:  # fmt: skip
    """Store the outcomes of `items` in one transaction: each one's status (STORED or
    DUPLICATE). UnknownPrediction, ConflictingOutcome: nothing stored.
    PredictionLogUnavailable: the database is down or too slow."""
    ids = sorted({request_id for request_id, _, _ in items})
    try:
        with _transaction(url, timeout_s) as (db, mark):
            if missing := _missing(items, _served(db, mark, model, ids)):
                raise UnknownPrediction(missing)
            known = _stored(db, mark, model, ids)
            statuses, new, conflicts = _classify(items, known)
            if conflicts:
                raise ConflictingOutcome(conflicts)
            ts = time.time() if now is None else now
            insert = (
                f"INSERT INTO feedback (model, request_id, position, ts, outcome) "
                f"VALUES ({_marks(mark, 5)}) ON CONFLICT DO NOTHING"
            )
            rows = [(model, r, p, ts, o) for r, p, o in new]
            if rows:
                db.executemany(insert, rows) if mark == "?" else _many(db, insert, rows)
            return statuses
    except (sqlite3.OperationalError, _postgres_errors()) as exc:
        raise PredictionLogUnavailable(f"storing feedback: {type(exc).__name__}: {exc}") from exc


def _many(db: Any, statement: str, rows: list[tuple[Any, ...]]) -> None:
    with db.cursor() as cursor:
        cursor.executemany(statement, rows)


def _postgres_errors() -> type[Exception]:
    """psycopg's errors: unreachable, too slow, and also a table or a grant missing (a
    database older than infra/postgres/init.sql): the service's state, not the caller's."""
    try:
        import psycopg
    except ImportError:  # the SQLite default without the Postgres driver
        return sqlite3.OperationalError
    return psycopg.Error


def _classify(
    items: list[Item], known: dict[tuple[str, int], str]
) -> tuple[list[str], list[Item], list[dict[str, Any]]]:
    """(each item's status, the items to insert, the conflicts): an item repeated in the
    call counts as stored once."""
    statuses, new, conflicts = [], [], []
    for request_id, position, outcome in items:
        key = (request_id, position)
        if key in known:
            if known[key] != outcome:
                conflicts.append(
                    {"request_id": request_id, "position": position,
                     "stored": loads(known[key]), "sent": loads(outcome)}
                )  # fmt: skip
            statuses.append(DUPLICATE)
            continue
        known[key] = outcome
        new.append((request_id, position, outcome))
        statuses.append(STORED)
    return statuses, new, conflicts


@dataclass(frozen=True)
class Labelled:
    """A served record with its true outcome."""

    predicted_at: float
    version: str
    alias: str
    prediction: dict[str, Any]  # as logged
    outcome: Any
    received_at: float


# A shadow's rows join too: the challenger scored on the same requests, labelled by the
# same outcomes, is the comparison that costs the clients nothing
LABELLED_QUERY = (
    "SELECT p.request_id, p.id, p.route, p.ts, p.version, p.alias, p.positions, p.outputs, "
    "f.position, f.outcome, f.ts FROM feedback f JOIN predictions p "
    "ON p.model = f.model AND p.request_id = f.request_id "
    "WHERE f.model = {0} AND f.ts >= {0} AND p.ts >= {0} "
    "ORDER BY f.ts DESC, p.id DESC"
)
SERVED_QUERY = (
    "SELECT version, alias, SUM(records) FROM predictions "
    "WHERE model = {0} AND ts >= {0} GROUP BY version, alias"
)


@contextlib.contextmanager
def _reader(url: str, timeout_s: float) -> Iterator[tuple[Any, str] | None]:
    """A read-only connection and its mark; None where nothing was logged yet."""
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        if not path.exists():
            yield None
            return
        db: Any = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
        with contextlib.closing(db):
            found = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'feedback'")
            yield (db, "?") if found.fetchone()[0] else None
        return
    with connect_postgres(url, timeout_s) as db:
        (table,) = db.execute("SELECT to_regclass('feedback')").fetchone()
        yield None if table is None else (db, "%s")


def read_labelled(
    url: str, model: str, since: float, records: int, timeout_s: float = READ_TIMEOUT_S
) -> tuple[list[Labelled], dict[tuple[str, str], int]]:
    """The latest `records` labelled records of `model` predicted after `since` (the newest
    feedback first; a shadow's scoring of them too), and the records served (or scored in
    the shadow) per (version, alias) since then: coverage's denominator.
    PredictionLogUnavailable: unreachable or too slow."""
    try:
        with _reader(url, timeout_s) as found:
            if found is None:
                return [], {}
            db, mark = found
            served = {
                (v, a): int(n) for v, a, n in db.execute(SERVED_QUERY.format(mark), (model, since))
            }
            cursor = db.execute(LABELLED_QUERY.format(mark), (model, since, since))
            return _labelled(cursor, records), served
    except (sqlite3.OperationalError, _postgres_errors()) as exc:
        raise PredictionLogUnavailable(f"reading feedback: {type(exc).__name__}: {exc}") from exc


def _labelled(cursor: Any, records: int) -> list[Labelled]:
    """Rows of the join as Labelled records: a request id logged twice by the model (a
    client reusing one) counts once, with its newest prediction (and once more for the
    shadow that scored it)."""
    out: list[Labelled] = []
    seen: set[tuple[str, int, bool]] = set()
    parsed: dict[int, dict[int, dict[str, Any]]] = {}  # a row's outputs by position
    while len(out) < records and (batch := cursor.fetchmany(200)):
        for request_id, row_id, route, ts, version, alias, *rest in batch:
            positions, outputs, pos, outcome, at = rest
            key = (request_id, pos, route == "shadow")
            if key in seen:
                continue
            if row_id not in parsed:
                parsed[row_id] = dict(zip(loads(positions), loads(outputs), strict=True))
            if pos not in parsed[row_id]:  # an older row of a reused id: not this record
                continue
            seen.add(key)
            prediction = parsed[row_id][pos]
            out.append(Labelled(ts, version, alias, prediction, loads(outcome), at))
    return out[:records]


@dataclass(frozen=True)
class Example:
    """A served record's inputs (as the request sent them) with its true outcome: what
    snapshot@<key> turns into a training row."""

    request_id: str
    position: int
    predicted_at: float
    labelled_at: float
    inputs: dict[str, Any] | None  # None: over the log's size cap, not stored
    outcome: Any


# The model's own answers (a shadow's scoring of the same request holds the same inputs)
EXAMPLES_QUERY = (
    "SELECT p.request_id, p.id, p.ts, p.positions, p.inputs, f.position, f.outcome, f.ts "
    "FROM feedback f JOIN predictions p ON p.model = f.model AND p.request_id = f.request_id "
    "WHERE f.model = {0} AND p.route <> 'shadow' ORDER BY p.id DESC, f.position"
)


def read_examples(
    url: str, model: str, records: int, timeout_s: float = READ_TIMEOUT_S
) -> list[Example]:
    """The newest `records` labelled records `model` served, newest first, each with the
    inputs it was served on. A request id logged twice (a client reusing one) counts once,
    with its newest row. PredictionLogUnavailable: unreachable or too slow."""
    try:
        with _reader(url, timeout_s) as found:
            if found is None:
                return []
            db, mark = found
            cursor = db.execute(EXAMPLES_QUERY.format(mark), (model,))
            return _examples(cursor, records)
    except (sqlite3.OperationalError, _postgres_errors()) as exc:
        raise PredictionLogUnavailable(f"reading feedback: {type(exc).__name__}: {exc}") from exc


def _examples(cursor: Any, records: int) -> list[Example]:
    out: list[Example] = []
    seen: set[tuple[str, int]] = set()
    parsed: dict[int, dict[int, dict[str, Any]]] = {}  # a row's records by position
    while len(out) < records and (batch := cursor.fetchmany(200)):
        for request_id, row_id, ts, positions, inputs, pos, outcome, at in batch:
            if (request_id, pos) in seen:
                continue
            if row_id not in parsed:
                parsed[row_id] = dict(zip(loads(positions), records_of(loads(inputs)), strict=True))
            if pos not in parsed[row_id]:  # an older row of a reused id: not this record
                continue
            seen.add((request_id, pos))
            record = parsed[row_id][pos]
            kept = None if TRUNCATED in record else record
            out.append(Example(request_id, pos, ts, at, kept, loads(outcome)))
    return out[:records]


ORPHANS = (
    "DELETE FROM feedback WHERE (model, request_id) IN ("
    "SELECT f.model, f.request_id FROM feedback f WHERE NOT EXISTS ("
    "SELECT 1 FROM predictions p WHERE p.request_id = f.request_id AND p.model = f.model) "
    "LIMIT {0})"
)


def prune(url: str, timeout_s: float = READ_TIMEOUT_S, batch: int = PRUNE_BATCH) -> int:
    """Delete the outcomes whose prediction the log's retention deleted (by age or count),
    `batch` at a time, each its own transaction. The number deleted. Run after the log's
    own retention (predlog.prune), by the drift service."""
    if url in ("", "off"):
        return 0
    with contextlib.ExitStack() as stack:
        if url.startswith("sqlite:///"):
            if not sqlite_path(url).exists():
                return 0
            db: Any = sqlite3.connect(sqlite_path(url), timeout=timeout_s, isolation_level=None)
            stack.enter_context(contextlib.closing(db))
            exists, mark = "SELECT count(*) FROM sqlite_master WHERE name = 'feedback'", "?"
        else:
            db = stack.enter_context(connect_postgres(url, timeout_s, autocommit=True))
            exists, mark = "SELECT count(to_regclass('feedback'))", "%s"
        if not db.execute(exists).fetchone()[0]:
            return 0
        total = 0
        while (deleted := int(db.execute(ORPHANS.format(mark), (batch,)).rowcount)) > 0:
            total += deleted
            if deleted < batch:
                break
        return total
