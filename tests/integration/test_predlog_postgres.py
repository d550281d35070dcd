"""The production prediction log: the same group commits into the machine's PostgreSQL."""

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from services.api.predlog import (
    PostgresSink,
    PredictionLog,
    PredictionLogUnavailable,
    Row,
    open_sink,
)
from services.tools.bench.predlog import postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def database() -> Iterator[str]:
    with postgres_database("predlog_test") as url:
        yield url


def row(request_id: str) -> Row:
    return (1.0, request_id, "churn", "2", "champion", "/predict", 1, "[0]", '[{"a":1}]', "[{}]")


def test_rows_are_committed_in_groups_and_survive_a_dropped_connection(database: str) -> None:
    sink = open_sink(database)
    assert isinstance(sink, PostgresSink)
    log = PredictionLog(sink)

    async def traffic() -> list[object]:
        await asyncio.gather(*(log.append([row(f"a{i}")]) for i in range(20)))
        with psycopg.connect(database, autocommit=True) as other:  # the server drops the link
            other.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        lost = await asyncio.gather(log.append([row("b0")]), return_exceptions=True)
        await log.append([row("c0")])  # the next group reconnects
        await log.close()
        return lost

    lost = asyncio.run(traffic())
    # the request whose commit failed was refused (503), not acknowledged and then lost
    assert isinstance(lost[0], PredictionLogUnavailable)
    with psycopg.connect(database) as db:
        ids = [r[0] for r in db.execute("SELECT request_id FROM predictions ORDER BY id")]
    assert sorted(ids[:20]) == sorted(f"a{i}" for i in range(20)) and ids[20:] == ["c0"]
