"""Processes of a demo stack: on a free port, started with their logs in files, ready-checked,
always stopped."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from contract.paths import ROOT

READY_S = 180


def free_port() -> int:
    """A port no one listens on now (the kernel's pick on 127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    name: str
    command: list[str]
    port: int
    ready: str  # the path that answers 200 once it serves
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _ready(process: Process, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{process.name} exited {child.returncode}:\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(process.url + process.ready, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{process.name} not ready after {READY_S} s (log: {log})")


@contextlib.contextmanager
def started(
    processes: list[Process], logs: Path, say: Callable[[str], None]
) -> Iterator[dict[str, str]]:
    """Start all, wait until each is ready; SIGTERM (then SIGKILL) to each group at the end."""
    logs.mkdir(parents=True, exist_ok=True)
    children: list[subprocess.Popen[bytes]] = []
    try:
        for process in processes:
            log = logs / f"{process.name}.log"
            with log.open("ab") as output:
                children.append(
                    subprocess.Popen(
                        process.command,
                        cwd=ROOT,
                        env=os.environ | process.env,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        for process, child in zip(processes, children, strict=True):
            _ready(process, child, logs / f"{process.name}.log")
            say(f"ready: {process.name:<12} {process.url}")
        yield {p.name: p.url for p in processes}
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait(5)
