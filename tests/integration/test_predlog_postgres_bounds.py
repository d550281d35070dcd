"""The prediction log's bounds on the machine's PostgreSQL: infra/postgres/init.sql's roles
(the services INSERT, and read what finds a prediction for its feedback; the drift service
SELECT and DELETE), timeouts that end as PredictionLogUnavailable, the server-side cursor of
the drift reader, the retention; feedback stored, joined and pruned under those roles."""

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from contract.paths import ROOT
from services.api import feedback, predlog
from services.api.predlog import (
    COLUMNS,
    PredictionLog,
    PredictionLogUnavailable,
    Row,
    dumps,
    open_sink,
    prune,
    read_window,
)
from services.tools.bench.predlog import PG_SERVER, postgres_database
from tests.conftest import unavailable

pytestmark = pytest.mark.postgres


@dataclass
class Urls:
    owner: str  # what created the database (the compose POSTGRES_USER)
    writer: str  # the model services' role
    drift: str  # the drift service's role


def init_sql_for_predictions(database: str, writer: str, drift: str) -> None:
    """init.sql from its `\\connect` on (the prediction log's part), on a throwaway database
    and roles: the server is shared, so the names are the test's own."""
    text = (ROOT / "infra" / "postgres" / "init.sql").read_text()
    part = text[text.index("\n\\connect ") :]
    variables = {"predictions_db": database, "writer_role": writer, "drift_role": drift}
    command = ["psql", f"{PG_SERVER}/{database}", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        command += ["-v", f"{name}={value}"]
    env = os.environ | {
        "PREDICTIONS_WRITER_PASSWORD": "w-secret",
        "PREDICTIONS_DRIFT_PASSWORD": "d-secret",
    }
    done = subprocess.run(command, input=part, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def urls() -> Iterator[Urls]:
    if shutil.which("psql") is None:
        unavailable("psql (15 or later) runs init.sql: apt-get install postgresql-client")
    suffix = uuid.uuid4().hex[:8]
    writer, drift = f"predlog_writer_{suffix}", f"predlog_drift_{suffix}"
    try:
        with postgres_database("predlog_bounds") as owner:
            database = owner.rsplit("/", 1)[1]
            init_sql_for_predictions(database, writer, drift)
            server = PG_SERVER.removeprefix("postgresql://postgres@")
            yield Urls(
                owner,
                f"postgresql://{writer}@{server}/{database}",
                f"postgresql://{drift}@{server}/{database}",
            )
    finally:  # the database is gone: nothing of the roles is left to revoke
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            for role in (writer, drift):
                admin.execute(f"DROP ROLE IF EXISTS {role}")


def row(request_id: str, ts: float = 1.0, model: str = "churn", size: int = 0) -> Row:
    inputs = dumps([{"a": 1, "pad": "x" * size}])
    return (ts, request_id, model, "2", "champion", "/predict", 1, "[0]", inputs, '[{"value":1}]')


def append(url: str, rows: list[Row], timeout_s: float = 5.0) -> None:
    async def traffic() -> None:
        log = PredictionLog(open_sink(url, timeout_s))
        try:
            await log.append(rows)
        finally:
            await log.close()

    asyncio.run(traffic())


def refused(url: str, statement: str) -> bool:
    with psycopg.connect(url, autocommit=True) as db:
        try:
            db.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def request_ids(url: str) -> list[str]:
    with psycopg.connect(url) as db:
        return [r[0] for r in db.execute("SELECT request_id FROM predictions ORDER BY id")]


def test_init_sql_makes_the_table_the_services_would(urls: Urls) -> None:
    with psycopg.connect(urls.owner) as db:
        columns = {
            r[0]
            for r in db.execute(
                "SELECT attname FROM pg_attribute "
                "WHERE attnum > 0 AND attrelid = 'predictions'::regclass"
            )
        }
        names = list(predlog.table_sql("BIGSERIAL PRIMARY KEY"))
        missing = db.execute(
            "SELECT count(*) FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", (names,)
        ).fetchone()
    assert columns == {"id", *COLUMNS}
    assert missing == (0,)  # the writer attempts no DDL


def test_the_services_role_inserts_and_reads_only_what_feedback_needs(urls: Urls) -> None:
    append(urls.writer, [row("a"), row("b")])
    assert request_ids(urls.owner) == ["a", "b"]
    with psycopg.connect(urls.writer) as db:  # a prediction found by its request id
        found = db.execute("SELECT model, route, positions FROM predictions WHERE request_id = 'a'")
        assert found.fetchall() == [("churn", "/predict", "[0]")]
    for statement in (
        "SELECT * FROM predictions",
        "SELECT inputs FROM predictions",
        "SELECT outputs FROM predictions",
        "UPDATE feedback SET outcome = '1'",
        "DELETE FROM feedback",
        "DELETE FROM predictions",
        "UPDATE predictions SET model = 'x'",
        "TRUNCATE predictions",
        "CREATE TABLE other (x int)",
        "DROP INDEX predictions_model_id",
    ):
        assert refused(urls.writer, statement), statement


def test_the_drift_role_reads_and_deletes_but_does_not_write(urls: Urls) -> None:
    append(urls.writer, [row(f"r{i}", ts=float(i)) for i in range(10)])
    found = read_window(urls.drift, "churn", 3, since=0)
    assert [ts for ts, *_ in found] == [7.0, 8.0, 9.0]
    assert prune(urls.drift, max_age_s=5, max_rows=0, now=10.0, batch=2) == 5
    assert prune(urls.drift, max_age_s=0, max_rows=3, batch=2) == 2
    assert request_ids(urls.owner) == ["r7", "r8", "r9"]
    insert = (
        f"INSERT INTO predictions ({', '.join(COLUMNS)}) "
        "VALUES (1, 'x', 'm', '1', 'a', '/p', 1, '[]', '[]', '[]')"
    )
    assert refused(urls.drift, insert)
    assert refused(urls.drift, "UPDATE predictions SET model = 'x'")


def test_without_the_table_the_services_role_is_refused_plainly(urls: Urls) -> None:
    with psycopg.connect(urls.owner, autocommit=True) as db:
        db.execute("DROP TABLE predictions")
    with pytest.raises(PredictionLogUnavailable, match="InsufficientPrivilege"):
        append(urls.writer, [row("a")])


def test_an_owner_on_a_fresh_database_creates_the_table_and_its_indexes() -> None:
    with postgres_database("predlog_fresh") as url:
        append(url, [row("a")])
        with psycopg.connect(url) as db:
            indexes = {
                r[0]
                for r in db.execute(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'predictions'"
                )
            }
            feedback = {
                r[0]
                for r in db.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'feedback'")
            }
        assert indexes == {"predictions_pkey", "predictions_model_id", "predictions_request_id"}
        assert feedback == {"feedback_pkey", "feedback_model_ts"}


def test_feedback_is_stored_joined_and_pruned_under_the_roles(urls: Urls) -> None:
    """The services store outcomes (a retry is a duplicate, another value a conflict, an
    unknown id stores nothing); the drift service reads the join and prunes what lost its
    prediction; neither role can do the other's part."""
    append(urls.writer, [row("a", ts=time.time()), row("b", ts=time.time())])
    assert feedback.store(urls.writer, "churn", [("a", 0, '"churns"')]) == ["stored"]
    assert feedback.store(urls.writer, "churn", [("a", 0, '"churns"')]) == ["duplicate"]
    with pytest.raises(feedback.ConflictingOutcome):
        feedback.store(urls.writer, "churn", [("b", 0, '"stays"'), ("a", 0, '"stays"')])
    with pytest.raises(feedback.UnknownPrediction):
        feedback.store(urls.writer, "churn", [("b", 0, '"stays"'), ("zz", 0, '"stays"')])
    labelled, served = feedback.read_labelled(urls.drift, "churn", time.time() - 60, 10)
    assert [(r.outcome, r.prediction) for r in labelled] == [("churns", {"value": 1})]
    assert served == {("2", "champion"): 2}
    with pytest.raises(PredictionLogUnavailable, match="InsufficientPrivilege"):
        feedback.read_labelled(urls.writer, "churn", 0, 10)  # the services read no outputs
    with pytest.raises(PredictionLogUnavailable, match="InsufficientPrivilege"):
        feedback.store(urls.drift, "churn", [("b", 0, '"stays"')])
    assert prune(urls.drift, max_age_s=0, max_rows=1) == 1  # a's prediction goes...
    assert feedback.prune(urls.drift) == 1  # ...and its outcome with it


class Locked:
    """The table locked by another session (a migration, a stuck VACUUM FULL) while inside."""

    def __init__(self, url: str) -> None:
        self.db = psycopg.connect(url)

    def __enter__(self) -> None:
        self.db.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")

    def __exit__(self, *_: Any) -> None:
        self.db.rollback()
        self.db.close()


def timed_append(url: str, timeout_s: float) -> tuple[BaseException | None, float]:
    started = time.perf_counter()
    try:
        append(url, [row("blocked")], timeout_s)
    except PredictionLogUnavailable as exc:
        return exc, time.perf_counter() - started
    return None, time.perf_counter() - started


def test_a_locked_table_makes_a_quick_503_not_a_hang(urls: Urls) -> None:
    append(urls.writer, [row("before")])
    with Locked(urls.owner):
        error, seconds = timed_append(urls.writer, 0.5)
        # the URL's own options win: without a statement_timeout, the lock_timeout still ends it
        no_statement_timeout = urls.writer + "?options=-c%20statement_timeout%3D0"
        lock_error, lock_seconds = timed_append(no_statement_timeout, 0.5)
    assert isinstance(error, PredictionLogUnavailable) and seconds < 3, (error, seconds)
    assert "timeout" in str(error)
    assert lock_error is not None and lock_seconds < 3, (lock_error, lock_seconds)
    assert "lock timeout" in str(lock_error)
    append(urls.writer, [row("after")])  # the lock is gone: stored again
    assert request_ids(urls.owner) == ["before", "after"]


def test_a_locked_table_fails_the_drift_read_and_the_pruning_plainly(urls: Urls) -> None:
    append(urls.writer, [row("a")])
    with Locked(urls.owner):
        started = time.perf_counter()
        with pytest.raises(PredictionLogUnavailable, match=r"reading the prediction log.*timeout"):
            read_window(urls.drift, "churn", 10, since=0, timeout_s=0.5)
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            prune(urls.drift, max_age_s=1, max_rows=0, timeout_s=0.5)
        assert time.perf_counter() - started < 5


def test_the_window_is_streamed_through_a_server_side_cursor(
    urls: Urls, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [row(f"r{i}", ts=float(i), size=100) for i in range(3 * predlog.FETCH)]
    append(urls.writer, [*rows, row("other", ts=1e9, model="titanic")])
    names: list[str | None] = []
    cursor = psycopg.Connection.cursor

    def spy(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        names.append(kwargs.get("name"))
        return cursor(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "cursor", spy)
    found = read_window(urls.drift, "churn", 5, since=0)
    assert [ts for ts, *_ in found] == [595.0, 596.0, 597.0, 598.0, 599.0]
    assert "drift_window" in names  # a named cursor: FETCH by FETCH, not the whole result
    each = len(rows[0][8]) + len(rows[0][9])
    found = read_window(urls.drift, "churn", 10_000, since=0, max_bytes=250 * each)
    assert len(found) == 250 and found[-1][0] == 599.0  # the newest, within the budget
    assert read_window(urls.drift, "churn", 10, since=1e9) == []
