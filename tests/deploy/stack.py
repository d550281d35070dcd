"""docker-compose.yml brought up as a user does, with tests/deploy/compose.test.yml on top."""

import json
import secrets
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.paths import ROOT
from services.bench.servers import free_port
from tests.deploy.engine import Engine, compose_command
from tests.deploy.images import TAG
from tests.workspace import REDUCED_PARAMS, merge

PROJECT = "mlops-deploy-test"
FILES = ("docker-compose.yml", "tests/deploy/compose.test.yml")
# published on 127.0.0.1 by docker-compose.yml without a variable of their own
FIXED_PORTS = (5000, 6566, 8000, 8001, 8002, 8089, 8200, 9000, 9001, 9090, 9093)
PAYLOADS = Path(__file__).with_name("payloads.py")
Progress = Callable[[str], None]


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def reduced_params(folder: Path) -> Path:
    """params.yaml with tests/integration/reduced_params.yaml merged over its models."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = merge(params, {"models": yaml.safe_load(REDUCED_PARAMS.read_text())})
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    path.chmod(0o644)  # read by the containers' uid 10001
    folder.chmod(0o755)
    return path


@dataclass
class ComposeStack:
    engine: Engine
    params: Path
    log: Path
    progress: Progress
    env: dict[str, str] = field(default_factory=dict)
    first_up_s: float = 0.0

    def __post_init__(self) -> None:
        self.env = self.engine.env(
            COMPOSE_PROJECT_NAME=PROJECT,
            COMPOSE_PROFILES="cpu",
            IMAGE_TAG=TAG,
            POSTGRES_USER="mlops",
            POSTGRES_PASSWORD=secrets.token_urlsafe(16),
            MINIO_ROOT_USER="mlops",
            MINIO_ROOT_PASSWORD=secrets.token_urlsafe(16),
            GRAFANA_ADMIN_PASSWORD=secrets.token_urlsafe(16),
            POSTGRES_PORT=str(free_port()),
            REDIS_PORT=str(free_port()),
            PROXY_PORT=str(free_port()),
            DEPLOY_TEST_PARAMS=str(self.params),
            COMPOSE_HTTP_TIMEOUT="300",  # docker-compose v1's API calls on a loaded machine
        )

    @property
    def command(self) -> list[str]:
        files = [arg for name in FILES for arg in ("-f", name)]
        return [*(compose_command() or ["docker-compose"]), *files]

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.env['PROXY_PORT']}"

    @property
    def postgres_dsn(self) -> str:
        env = self.env
        return (
            f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
            f"@127.0.0.1:{env['POSTGRES_PORT']}"
        )

    def compose(self, *args: str, timeout: float = 600, **kwargs: Any) -> str:
        """One docker-compose command; its output goes to the log too."""
        result = subprocess.run(
            [*self.command, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, **kwargs,
        )  # fmt: skip
        with self.log.open("a") as out:
            out.write(f"$ docker-compose {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        if result.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}:\n{result.stderr[-4000:]}")
        return result.stdout

    def up(self, timeout: float = 3600) -> float:
        """`up -d` (it waits for every healthcheck and the trainer); the trainer's latest log
        line every 30 s meanwhile. Returns the seconds it took."""
        taken = [p for p in FIXED_PORTS if busy(p)]
        assert not taken, f"ports the compose file publishes are in use here: {taken}"
        started = time.monotonic()
        with self.log.open("a") as out:
            out.write("$ docker-compose up -d --no-build\n")
            out.flush()
            process = subprocess.Popen(
                [*self.command, "up", "-d", "--no-build"], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    process.kill()
                    raise TimeoutError(f"docker-compose up took over {timeout} s ({self.log})")
                time.sleep(30)
                self.progress(f"up {time.monotonic() - started:5.0f} s: {self.last_line()}")
        if process.returncode != 0:
            raise RuntimeError(f"docker-compose up failed:\n{self.log.read_text()[-6000:]}")
        return time.monotonic() - started

    def last_line(self, service: str = "trainer") -> str:
        logs = self.engine.run("logs", "--tail", "1", f"{PROJECT}_{service}_1", check=False)
        lines = (logs.stdout + logs.stderr).strip().splitlines()
        return lines[-1][:160] if lines else "(no output yet)"

    def down(self, *options: str) -> None:
        self.compose("down", *options, timeout=600)

    def containers(self) -> dict[str, dict[str, Any]]:
        """`docker inspect` of every container of the project, by compose service name."""
        ids = self.compose("ps", "-q").split()
        inspected = json.loads(self.engine.run("inspect", *ids).stdout) if ids else []
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def payloads(self) -> dict[str, Any]:
        """Request bodies made in the drift container from the stack's own test splits."""
        out = self.compose("exec", "-T", "drift", "python", "-", input=PAYLOADS.read_text())
        return json.loads(out)  # type: ignore[no-any-return]

    def wait_healthy(self, services: set[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {k: health(c) for k, c in self.containers().items()}
            waiting = {s: states.get(s) for s in services if states.get(s) != "healthy"}
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout} s: {waiting}")
            time.sleep(5)


def health(container: dict[str, Any]) -> str | None:
    """A container's healthcheck status (None: it has no healthcheck)."""
    state: dict[str, Any] = container["State"]
    return state.get("Health", {}).get("Status")  # type: ignore[no-any-return]
