"""Real services over real HTTP: a registry of the reduced-params models, uvicorn processes."""

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import psutil
import pytest

from contract import paths
from contract.catalog import get_spec
from contract.paths import ROOT
from contract.settings import get_settings
from pipelines.export import open_session, run_rows
from services.api.inputs import records_limit
from services.tools.examples import as_records
from services.tools.processes import free_port
from tests.conftest import CATALOG, KEYS

__all__ = ["as_records", "free_port"]

STARTUP_S = 120


@contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


class Registry:
    """A throwaway MLflow registry (SQLite) holding every catalog model: a copy of the one the
    reduced workspace's first `dvc repro` registered into (each model v1 @champion)."""

    def __init__(self, folder: Path, trained: Path) -> None:
        self.folder, self.trained = folder, trained
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(trained / "mlruns" / "mlflow.db", folder / "mlflow.db")

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def copy_version(self, key: str, alias: str) -> str:
        """A new version with the champion's artifact, under `alias` (an alias move)."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)  # MLflow 3 finds the logged model through these
        mlflow.set_registry_uri(self.uri)
        client = self.client()
        champion = client.get_model_version_by_alias(key, "champion")
        new = client.create_model_version(
            key, champion.source, run_id=champion.run_id, tags=champion.tags
        )
        client.set_registered_model_alias(key, alias, new.version)
        return str(new.version)


@pytest.fixture(scope="session")
def registry(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """Every model of the reduced-params workspace as its `dvc repro` registered it: v1
    @champion (registering the eighteen again took 2 minutes, 4 on a slow machine)."""
    store = Registry(tmp_path_factory.mktemp("registry"), trained)
    client = store.client()
    for key in KEYS:  # what the tests take for granted, said plainly if it is not so (once)
        version = client.get_model_version_by_alias(key, "champion").version
        assert str(version) == "1", f"{key}: the workspace's champion is v{version}, not v1"
    return store


def inherited_environment() -> dict[str, str]:
    """This process's environment, less a metrics folder its imports set: not a service's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}


class TrackingServer:
    """`mlflow server` on a backend store: a registry over HTTP that can be stopped."""

    def __init__(self, backend: str, folder: Path, *options: str, **env: str) -> None:
        bin_dir = Path(sys.executable).parent
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = (folder / "mlflow-server.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(bin_dir / "mlflow"), "server", "--backend-store-uri", backend,
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1", *options,
            ],
            # it runs uvicorn by name
            env=os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}"} | env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("mlflow server did not start")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


ADMIN_TOKEN = "test-admin-token-0123456789"  # every test service's SERVE_ADMIN_TOKEN
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK_TOKEN = "test-feedback-token-0123456789"  # every test service's SERVE_FEEDBACK_TOKEN


class Service:
    """`python -m services.serve <key>` as a subprocess, with its log kept in a file;
    `headers` go with each post() and get() (a credential)."""

    def __init__(self, key: str, registry_uri: str, folder: Path, **settings: str) -> None:
        self.key, self.folder = key, folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / f"{key}-{self.port}.log"
        self.env = (
            inherited_environment()
            | {
                "MLFLOW_TRACKING_URI": registry_uri,
                "SERVE_CACHE_DIR": str(folder / "cache"),
                "SERVE_RELOAD_INTERVAL_S": "0",
                # no feature store unless a test passes feature_root= (records still served)
                "SERVE_FEATURE_ROOT": str(folder / "no-feature-store"),
                "SERVE_PREDICTION_LOG": f"sqlite:///{folder / 'predictions.sqlite'}",
                "PYTHONPATH": str(ROOT),
                "SERVE_ADMIN_TOKEN": ADMIN_TOKEN,
                "SERVE_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
            }
            | {f"SERVE_{k.upper()}": v for k, v in settings.items()}
        )
        self.headers: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str] | None = None, workers: int = 1) -> "Service":
        command = command or [
            sys.executable,
            "-m",
            "services.serve",
            self.key,
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # its own group: stop() reaches its workers too
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, path: str = "/readyz", status: int = 200, timeout: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.key} exited {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise AssertionError(
            f"{self.key}: {path} not {status} in {timeout}s:\n{self.log()[-4000:]}"
        )

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.key}: no {text!r} in the log:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        family = []
        if self.process.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                family = psutil.Process(self.process.pid).children(recursive=True)
            os.kill(self.process.pid, sig)
        code = self.process.wait(timeout)
        for child in family:  # workers a server left behind (BentoML's run in their own group)
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return code

    def post(self, path: str, body: Any, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return httpx.post(self.url + path, json=body, timeout=60, **kwargs)

    def post_bytes(self, path: str, body: bytes) -> httpx.Response:
        headers = {**self.headers, "content-type": "application/json"}
        return httpx.post(self.url + path, content=body, headers=headers, timeout=60)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.headers)
        return httpx.get(self.url + path, timeout=60, **kwargs)


@pytest.fixture(scope="session")
def services(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Service]]:
    """One service per catalog model, started together, default settings."""
    folder = tmp_path_factory.mktemp("services")
    root = str(registry.trained)  # Feast-backed models read the workspace's online store
    running = {key: Service(key, registry.uri, folder, feature_root=root).start() for key in KEYS}
    try:
        for service in running.values():
            service.wait()
        yield running
    finally:
        for service in running.values():
            service.stop()


def held_out(trained: Path, key: str, rows: int = 8) -> pd.DataFrame:
    """The first test rows, no more than a request of the model may carry (a speech
    model's three recordings)."""
    limit = records_limit(CATALOG[key], rows)
    return pd.read_parquet(paths.split_dir(key, trained) / "test.parquet").head(limit)


def expected_outputs(trained: Path, key: str, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """What ONNX Runtime in this process makes of the same rows with the same artifact,
    opened as the export stage and the service open it (the task's `serve`: a search with
    its tokenizer and index, a transformer behind its tokenizer, a speech model's decoder
    after its front end). The artifact is the graph served: INT8 where export shipped it."""
    graph = paths.served_model(key, trained)
    session = open_session(
        onnx.load(str(graph)),
        get_spec(key, trained / "params.yaml"),
        paths.onnx_model(key, trained).parent,  # what is served beside it: a search's index
    )
    names = [o.name for o in session.get_outputs()]
    return run_rows(session, names, frame, CATALOG[key])  # photos one at a time, as served


def served_threshold(trained: Path, key: str) -> float | None:
    """The threshold the artifact's metadata gives the service (a detector's boxes)."""
    session = ort.InferenceSession(str(paths.served_model(key, trained)))
    value = session.get_modelmeta().custom_metadata_map.get("threshold")
    return None if value is None else float(value)


@pytest.fixture
def started() -> Iterator[list[Service]]:
    """Services a test starts; all stopped at the end."""
    running: list[Service] = []
    yield running
    for service in running:
        if service.process is not None and service.process.poll() is None:
            service.stop(signal.SIGKILL)


def serve(
    started: list[Service],
    key: str,
    registry_uri: str,
    folder: Path,
    wait: bool = True,
    **settings: str,
) -> Service:
    service = Service(key, registry_uri, folder, **settings).start()
    started.append(service)
    if wait:
        service.wait()
    return service


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (a listener there may
    find it taken: CI's Feast server did, at 33368)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_block(span: int = 205) -> int:
    """A base port below the ephemeral range whose `span` ports no one listens on now."""
    top = min(ephemeral_low(), 65_536) - span
    for _ in range(50):
        base = random.randint(min(20_000, top - 1), top)
        try:
            for port in range(base, base + span):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {span} free ports below {top + span}")
