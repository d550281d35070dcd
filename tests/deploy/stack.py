"""docker-compose.yml brought up as a user does, with tests/deploy/compose.test.yml on top."""

import calendar
import json
import random
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from contract.paths import ROOT
from tests.deploy import seed
from tests.deploy.engine import Engine, compose_command
from tests.deploy.images import TAG
from tests.workspace import REDUCED_PARAMS, merge

PROJECT = "mlops-deploy-test"
FILES = ("docker-compose.yml", "tests/deploy/compose.test.yml")
# what every service depends on: shown in a failure's report even when healthy (a registry
# that answers its healthcheck may still fail the services' requests)
SHARED = ("mlflow", "postgres")
# docker-compose.yml's host ports (each published on 127.0.0.1, a default when unset)
PORT_VARIABLES = (
    "POSTGRES_PORT", "REDIS_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT", "MLFLOW_PORT",
    "FEAST_PORT", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT", "PROXY_PORT",
    "DRIFT_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "GRAFANA_PORT", "LOCUST_PORT",
)  # fmt: skip
# Where they are drawn from: below the kernel's ephemeral range (free_port's) and the
# 20,000-40,000 blocks the host tiers' stacks draw at random, so that none of those takes one
# between this choice and the `up` that publishes it, minutes later (the tiers run at once)
PORT_RANGE = (15_000, 19_900)
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


def host_ports() -> dict[str, str]:
    """A free 127.0.0.1 port for each of PORT_VARIABLES, consecutive from a random base."""
    while True:
        base = random.randrange(*PORT_RANGE)
        ports = range(base, base + len(PORT_VARIABLES))
        if not any(busy(port) for port in ports):
            return {name: str(port) for name, port in zip(PORT_VARIABLES, ports, strict=True)}


@dataclass
class ComposeStack:
    engine: Engine
    params: Path
    log: Path
    progress: Progress
    cancelled: threading.Event = field(default_factory=threading.Event)
    env: dict[str, str] = field(default_factory=dict)
    first_up_s: float = 0.0
    seeded: "seed.Seed | None" = None  # what seed_remote put in the DVC remote

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
            PREDICTIONS_WRITER_PASSWORD=secrets.token_urlsafe(16),
            PREDICTIONS_DRIFT_PASSWORD=secrets.token_urlsafe(16),
            MLFLOW_ADMIN_PASSWORD=secrets.token_urlsafe(16),
            MLFLOW_READER_PASSWORD=secrets.token_urlsafe(16),
            MLFLOW_SECRET_KEY=secrets.token_urlsafe(16),
            ADMIN_TOKEN=secrets.token_urlsafe(16),
            WEBHOOK_TOKEN=secrets.token_urlsafe(16),
            FEEDBACK_TOKEN=secrets.token_urlsafe(16),
            **host_ports(),
            DEPLOY_TEST_PARAMS=str(self.params),
            COMPOSE_HTTP_TIMEOUT="300",  # docker-compose v1's API calls on a loaded machine
        )

    @property
    def command(self) -> list[str]:
        files = [arg for name in FILES for arg in ("-f", name)]
        return [*(compose_command() or ["docker-compose"]), *files]

    def url(self, port: str) -> str:
        """http://127.0.0.1:<port> for one of PORT_VARIABLES."""
        return f"http://127.0.0.1:{self.env[port]}"

    @property
    def proxy(self) -> str:
        return self.url("PROXY_PORT")

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
        line every minute meanwhile. Returns the seconds it took; `cancelled` stops it."""
        if not self.compose("ps", "-q").split():  # else its own containers publish some
            self.check_ports()
        started = time.monotonic()
        with self.log.open("a") as out:
            out.write("$ docker-compose up -d --no-build\n")
            out.flush()
            process = subprocess.Popen(
                [*self.command, "up", "-d", "--no-build"], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            said = started
            while process.poll() is None:
                if time.monotonic() - started > timeout:
                    process.kill()
                    raise TimeoutError(f"docker-compose up took over {timeout} s ({self.log})")
                if self.cancelled.wait(5):
                    process.kill()
                    raise RuntimeError("docker-compose up cancelled: pytest is ending")
                if time.monotonic() - said >= 60:
                    said = time.monotonic()
                    self.progress(f"up {said - started:5.0f} s: {self.last_line()}")
        if process.returncode != 0:
            raise RuntimeError(
                f"docker-compose up failed:\n{self.log.read_text()[-4000:]}\n{self.why_down()}"
            )
        return time.monotonic() - started

    def check_ports(self) -> None:
        """Before the project's first container starts: every host port it publishes is free."""
        taken = {name: self.env[name] for name in PORT_VARIABLES if busy(int(self.env[name]))}
        assert not taken, f"host ports for the stack are in use here: {taken}"

    def s3(self) -> Any:
        """A client of the stack's S3 (MinIO's role) with its root account."""
        return boto3.client(
            "s3", endpoint_url=self.url("MINIO_PORT"), region_name="us-east-1",
            aws_access_key_id=self.env["MINIO_ROOT_USER"],
            aws_secret_access_key=self.env["MINIO_ROOT_PASSWORD"],
        )  # fmt: skip

    def seed_remote(self, cache: Path) -> str:
        """Before the first `up`: S3 and its buckets alone, then the DVC remote given the host
        tiers' runs (tests/deploy/seed.py). Returns what went in, in words."""
        self.check_ports()
        self.compose("up", "-d", "--no-build", "minio-init", timeout=900)
        waited = self.engine.run("wait", f"{PROJECT}_minio-init_1", timeout=300)
        if waited.stdout.strip() != "0":
            raise RuntimeError(f"minio-init exited {waited.stdout.strip()}:\n{self.why_down()}")
        started = time.monotonic()
        found = seed.collect(cache)
        seed.upload(self.s3(), cache, found)
        self.seeded = found
        return (
            f"the DVC remote seeded with {len(found.runs)} runs of the host tiers' reduced repro"
            f" and their {len(found.objects)} objects ({found.size / 2**20:.0f} MiB) in"
            f" {time.monotonic() - started:.0f} s; left out: {found.skipped_runs} runs"
            f" ({', '.join(seed.TRAINED_HERE)} train in the container)"
        )

    def why_down(self) -> str:
        """Each container that is not running or not healthy: its state, its last health
        checks' outputs and its last log lines (compose's own error names only the service)."""
        try:
            containers = self.containers()
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
            return f"(the containers could not be inspected: {error})"
        lines = []
        for name, container in sorted(containers.items()):
            state = container["State"]
            status, healthy = state.get("Status"), health(container)
            fine = healthy in (None, "healthy") and (
                status == "running" or state.get("ExitCode") == 0
            )
            if fine and name not in SHARED:
                continue
            restarts = container.get("RestartCount", 0)
            lines.append(
                f"--- {name}: {status} (exit {state.get('ExitCode')}), health {healthy}, "
                f"{restarts} restart(s)"
            )
            for check in state.get("Health", {}).get("Log", [])[-3:]:
                output = " ".join(check.get("Output", "").split())[:300]
                lines.append(f"  check exit {check.get('ExitCode')}: {output}")
            logs = self.engine.run("logs", "--tail", "15", container["Id"], check=False)
            lines += [f"  | {line[:200]}" for line in (logs.stdout + logs.stderr).splitlines()]
        return "\n".join(lines) or "(every container is running or exited 0, and healthy)"

    def last_line(self, service: str = "trainer") -> str:
        logs = self.engine.run("logs", "--tail", "1", f"{PROJECT}_{service}_1", check=False)
        lines = (logs.stdout + logs.stderr).strip().splitlines()
        return lines[-1][:160] if lines else "(no output yet)"

    def trainer_timeline(self, up_s: float) -> str:
        """Where the first `up` went (timeline): the trainer's stages by kind, its slowest."""
        events = self.trainer_events()  # one read of the trainer's log
        (state,) = json.loads(self.engine.run("inspect", f"{PROJECT}_trainer_1").stdout)
        started, finished = (_seconds(state["State"][k]) for k in ("StartedAt", "FinishedAt"))
        return timeline(events, started, finished, up_s)

    def trainer_events(self) -> list[tuple[str, bool, str]]:
        """(timestamp, ran, stage) for each stage the trainer ran (DVC's "Running stage") or
        restored from the remote's run cache ("Stage '<name>' is cached - skipping run"), in
        order, stdout's and stderr's lines together."""
        name = f"{PROJECT}_trainer_1"
        logs = self.engine.run("logs", "--timestamps", name, check=False, timeout=60)
        events = []
        for line in (logs.stdout + logs.stderr).splitlines():
            stamp, _, text = line.partition(" ")
            if text.startswith("Running stage '"):
                events.append((stamp, True, text.split("'")[1]))
            elif text.startswith("Stage '") and "is cached - skipping run" in text:
                events.append((stamp, False, text.split("'")[1]))
        return sorted(events)

    def trainer_stages(self) -> tuple[list[str], list[str]]:
        """The stages the trainer ran, and those it restored from the remote's run cache."""
        events = self.trainer_events()
        return [s for _, ran, s in events if ran], [s for _, ran, s in events if not ran]

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


RESTORED = "restored"  # the kind of a stage checked out from the remote's run cache


def timeline(
    events: list[tuple[str, bool, str]], started: float, finished: float, up_s: float
) -> str:
    """The trainer's time by kind of stage, from its events (Stack.trainer_events): each
    stage, run or restored, lasts from its line to the next one (the last until the trainer
    exits, its push included). A restored stage is its own kind, RESTORED: charged to the
    stage run before it, the restores of other models made one model's stages look several
    times slower than on the host."""
    if not any(ran for _, ran, _ in events):
        return f"trainer: {finished - started:.0f} s, no stage ran"
    marks = [(_seconds(stamp), stage if ran else RESTORED) for stamp, ran, stage in events]
    ends = [t for t, _ in marks[1:]] + [finished]
    took = [(end - t, stage) for (t, stage), end in zip(marks, ends, strict=True)]
    kinds: Counter[str] = Counter()
    for seconds, stage in took:
        kinds[stage.split("@")[0]] += seconds
    by_kind = ", ".join(f"{k} {v:.0f}" for k, v in kinds.most_common())
    ran = [(sec, stage) for sec, stage in took if stage != RESTORED]
    slowest = ", ".join(f"{stage} {sec:.0f}" for sec, stage in sorted(ran, reverse=True)[:6])
    return (
        f"trainer {finished - started:.0f} s of the {up_s:.0f} s up ({len(ran)} stages run,"
        f" {len(took) - len(ran)} restored from the remote; by kind, s: {by_kind};"
        f" slowest: {slowest}); before it {marks[0][0] - started:.0f} s"
    )


def _seconds(stamp: str) -> float:
    """Seconds since the epoch of Docker's RFC 3339 time (nanoseconds, `Z`)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    parsed = time.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(parsed) + float(f"0.{fraction or 0}")


def health(container: dict[str, Any]) -> str | None:
    """A container's healthcheck status (None: it has no healthcheck)."""
    state: dict[str, Any] = container["State"]
    return state.get("Health", {}).get("Status")  # type: ignore[no-any-return]
