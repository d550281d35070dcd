"""Start a server pinned to CPU 0, wait until it answers, and always stop its whole group."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contract.paths import ROOT
from services.tools.processes import free_port

SERVER_CPU = "0"
BIN = Path(sys.executable).parent  # the venv's bin: python, bentoml, mlflow and uvicorn


class ServerError(RuntimeError):
    """A server exited or never became ready; the message ends with its log."""


def fetch(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when `body` is given."""
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def _tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if fetch(url, timeout=2.0)[0] == 200:
                return
        time.sleep(0.5)
    raise ServerError(f"not ready at {url} after {timeout:.0f} s:\n{_tail(log)}")


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM to the server's process group (it is its own session), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    # Workers of a group (bentoml, mlflow) may outlive their parent: kill what is left
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


@contextlib.contextmanager
def running(
    command: list[str],
    ready_path: str,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Iterator[str]:
    """Run `command` (with {port} filled in) on CPU 0; yields its base URL while it is up."""
    port = free_port()
    argv = ["taskset", "-c", SERVER_CPU, *(part.format(port=port) for part in command)]
    environment = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            env=environment | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=output,  # a file, never a pipe nobody drains: that would stall the server
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,  # bentoml serve finds its target module from the working directory
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_ready(process, base + ready_path, log, timeout)
            yield base
        finally:
            stop(process)


def check_post(url: str, body: bytes) -> Any:
    """The JSON answer of one POST; ServerError unless it is a 200."""
    status, answer = fetch(url, body, timeout=30.0)
    if status != 200:
        raise ServerError(f"POST {url} answered {status}: {answer[:500]!r}")
    return json.loads(answer)


def terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `running` block stops its server."""

    def handler(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
