"""MLflow as compose and k8s run it: `services.mlflow_server` (MLflow's basic-auth app) on the
machine's PostgreSQL, over real HTTP: who may read, who may write, and passwords that follow
the secret store across restarts."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from services.tools.processes import free_port
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN, READER = "admin-password-0123456789", "reader-password-0123456789"
ROTATED = "rotated-password-0123456789"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"mlflow_auth_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


class Server:
    def __init__(self, database: str, tmp: Path, reader: str = READER) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MLFLOW_BACKEND_STORE_URI": database,
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN,
            "MLFLOW_READER_PASSWORD": reader,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-key-0123456789abcdef",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "TMPDIR": str(tmp),
        }
        args = ["--host=127.0.0.1", f"--port={self.port}", "--workers=1", "--serve-artifacts",
                f"--artifacts-destination={tmp / 'artifacts'}"]  # fmt: skip
        self.log = tmp / f"server-{self.port}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.mlflow_server", *args],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:  # once: a restart stops it before the test ends
            os.killpg(self.process.pid, 15)
        self.process.wait(timeout=60)


def client(
    server: Server, user: str, password: str, monkeypatch: pytest.MonkeyPatch
) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def search(server: Server, auth: tuple[str, str] | None) -> httpx.Response:
    url = f"{server.url}/api/2.0/mlflow/registered-models/search"
    return httpx.get(url, auth=auth, timeout=30)


def test_the_registry_asks_for_an_account_and_the_reader_only_reads(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = Server(database, tmp_path)
    try:
        assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # probes
        for auth in (None, ("reader", "wrong-password-0123"), ("nobody", READER)):
            refused = search(server, auth)
            assert refused.status_code == 401, (auth, refused.text[:300])
        admin = client(server, "admin", ADMIN, monkeypatch)
        admin.create_registered_model("auth_test")
        admin.set_registered_model_tag("auth_test", "owner", "platform")
        reader = client(server, "reader", READER, monkeypatch)
        assert reader.get_registered_model("auth_test").tags == {"owner": "platform"}
        with pytest.raises(MlflowException, match="Permission denied"):
            reader.set_registered_model_tag("auth_test", "owner", "someone else")
        with pytest.raises(MlflowException, match="Permission denied"):
            reader.delete_registered_model("auth_test")
        assert (
            search(server, ("admin", ADMIN)).json()["registered_models"][0]["name"] == "auth_test"
        )
        # no password in a process's arguments; the auth file is the server user's only
        config = next(tmp_path.glob("mlflow-auth-*.ini"))
        assert config.stat().st_mode & 0o077 == 0
        assert all(ADMIN not in arg and "postgres" not in arg for arg in server.process.args)
        # a checked credential is cached (auth_cache_ttl_seconds), a wrong one never is
        assert search(server, ("reader", READER)).status_code == 200
        assert search(server, ("reader", "wrong-password-0123")).status_code == 401
        assert "auth_cache_ttl_seconds = 60" in config.read_text()
        # the secret store holds the passwords: a restart with a new one retires the old
        # (every start provisions the accounts, and the cache starts empty)
        server.stop()
        server = Server(database, tmp_path, reader=ROTATED)
        assert search(server, ("reader", READER)).status_code == 401
        assert search(server, ("reader", ROTATED)).status_code == 200
    finally:
        server.stop()


def test_the_server_refuses_to_start_on_example_or_missing_secrets(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "MLFLOW_AUTH_ADMIN_PASSWORD": "change-me",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "short"}  # fmt: skip
    refused = subprocess.run(
        [sys.executable, "-m", "services.mlflow_server"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1
    for problem in ("MLFLOW_BACKEND_STORE_URI is not set", "MLFLOW_AUTH_ADMIN_PASSWORD holds the "
                    "example value", "MLFLOW_READER_PASSWORD is not set",
                    "MLFLOW_FLASK_SERVER_SECRET_KEY has 5 characters"):  # fmt: skip
        assert problem in refused.stderr, refused.stderr
