"""Compose's and k8s' wiring, run as processes: the MLflow server on Postgres with proxied
artifacts, a model registered through it with compose's settings, a service loading its
champion over HTTP and logging its predictions to Postgres. Only S3 (MinIO) is a local
folder here: the server's --artifacts-destination is the one thing that differs."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from contract.catalog import get_spec
from services.tools.examples import as_records
from tests.conftest import CATALOG
from tests.serving.conftest import Service, TrackingServer, environment, held_out, serve

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """compose's databases (infra/postgres/init.sql), each of its own, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"{name}_{suffix}" for name in ("mlflow", "predictions")}
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"CREATE DATABASE {name}")
    yield {key: f"{SERVER}/{name}" for key, name in names.items()}
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        for name in names.values():
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def mlflow_server(databases: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """compose's `mlflow` command: Postgres backend, artifacts served by the server."""
    server = TrackingServer(
        databases["mlflow"].replace("postgresql://", "postgresql+psycopg://"),
        tmp_path,
        "--serve-artifacts",
        f"--artifacts-destination={(tmp_path / 'bucket').as_uri()}",
        MLFLOW_SERVER_ALLOWED_HOSTS="127.0.0.1:*,localhost:*",
    )
    try:
        yield server.uri
    finally:
        server.stop()


def test_a_model_registered_through_the_server_is_served_and_logged_to_postgres(
    trained: Path,
    mlflow_server: str,
    databases: dict[str, str],
    started: list[Service],
    tmp_path: Path,
) -> None:
    from pipelines.register import register

    # the trainer's settings in compose: the server's URL and its proxied artifact store
    with environment(
        MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_ARTIFACT_ROOT="mlflow-artifacts:/experiments"
    ):
        register(get_spec("titanic", trained / "params.yaml"), trained)
    stored = list((tmp_path / "bucket").rglob("model.onnx"))
    assert stored, "the ONNX model went to the server's artifact store"

    service = serve(
        started, "titanic", mlflow_server, tmp_path, prediction_log=databases["predictions"]
    )
    records = as_records(held_out(trained, "titanic", 5), CATALOG["titanic"])
    answer = service.post("/predict", {"records": records}, headers={"X-Request-ID": "topology"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == "1" and answer.json()["alias"] == "champion"
    with psycopg.connect(databases["predictions"]) as log:
        rows = log.execute("SELECT request_id, model, version, records FROM predictions").fetchall()
    assert rows == [("topology", "titanic", "1", 5)]
