"""The production backend: the same registration and gate against the machine's PostgreSQL."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from contract.settings import get_settings
from pipelines import evaluate, export, prepare, register, snapshot, train
from tests.conftest import CATALOG

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own, dropped afterwards."""
    name = f"mlflow_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    uri = f"{SERVER}/{name}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", (tmp_path / "artifacts").as_uri())
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def build(root: Path, **params: object) -> None:
    spec = CATALOG["titanic"]
    spec = spec.model_copy(update={"params": spec.params | params})
    for stage in (prepare, snapshot, train, evaluate, export):
        stage.main_work(spec, root)
    register.main_work(spec, root)


def test_register_and_gate_on_postgres(postgres_uri: str, tmp_path: Path) -> None:
    build(tmp_path)
    client = MlflowClient(tracking_uri=postgres_uri, registry_uri=postgres_uri)
    assert str(client.get_model_version_by_alias("titanic", "champion").version) == "1"
    build(tmp_path, max_iter=3, learning_rate=0.01)  # a deliberately worse model
    assert str(client.get_model_version_by_alias("titanic", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("titanic", "champion").version) == "1"
    with psycopg.connect(postgres_uri) as conn:
        count = conn.execute(
            "SELECT count(*) FROM model_versions WHERE name = 'titanic'"
        ).fetchone()
    assert count == (2,)
