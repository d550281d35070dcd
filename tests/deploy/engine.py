"""A Docker engine for the deploy tier: the one DOCKER_HOST names, or a dockerd started here.

Started here (root, Debian's `docker.io`): its own data root, exec root and socket under
DEPLOY_DOCKER_DIR (default /var/tmp/mlops-reference-docker, kept between runs so that images
and build caches are reused), stopped again at the end of the session. Storage: overlay2
where the kernel mounts an overlay on that folder, else vfs (DEPLOY_STORAGE_DRIVER picks one).
vfs copies a whole image per layer and per container: the stack's 20 containers of 0.3-3 GB
images take over 50 GB and minutes of copying there, against a few GB with overlay2.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEPLOY_DIR = Path(os.environ.get("DEPLOY_DOCKER_DIR", "/var/tmp/mlops-reference-docker"))
# Debian's 20.10 client builds with BuildKit natively; a newer client without buildx cannot
CLIENTS = ("/usr/bin/docker", "docker")
INSTALL = "apt-get install docker.io docker-compose debootstrap (make system-packages)"


def client() -> str | None:
    """The docker client that builds with BuildKit: Debian's first, then PATH's."""
    for name in CLIENTS:
        if found := shutil.which(name):
            return found
    return None


def compose_command() -> list[str] | None:
    """`docker-compose` (Debian's v1), else the `docker compose` plugin."""
    if found := shutil.which("docker-compose"):
        return [found]
    docker = client()
    plugin = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    return [docker, "compose"] if docker and plugin and plugin.returncode == 0 else None


def why_unavailable() -> str | None:
    """Why no engine can be had here, or None when one can."""
    if not client():
        return f"no docker client ({INSTALL})"
    if not compose_command():
        return f"no docker-compose ({INSTALL})"
    if os.environ.get("DOCKER_HOST"):
        return None  # the caller's engine; reachability is checked when it is used
    if not shutil.which("dockerd"):
        return f"no Docker engine running and no dockerd to start ({INSTALL})"
    if os.geteuid() != 0:
        return "dockerd can only be started as root here (or set DOCKER_HOST to an engine)"
    return None


@dataclass
class Engine:
    host: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    docker: str = field(default_factory=lambda: client() or "docker")

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1", **extra}

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.docker, *args], env=self.env(), capture_output=True, text=True,
            timeout=timeout, **kwargs,  # type: ignore[call-overload]
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()[-2000:]}")
        return result  # type: ignore[no-any-return]

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def stop(self) -> None:
        """Stop the dockerd this session started (its containers stop with it)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def storage_driver(directory: Path) -> str:
    """overlay2 if an overlay mounts on `directory`'s file system, else vfs."""
    if chosen := os.environ.get("DEPLOY_STORAGE_DRIVER"):
        return chosen
    with tempfile.TemporaryDirectory(dir=directory) as work:
        layers = [Path(work, name) for name in ("lower", "upper", "work", "merged")]
        for layer in layers:
            layer.mkdir()
        lower, upper, scratch, merged = layers
        options = f"lowerdir={lower},upperdir={upper},workdir={scratch}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], capture_output=True
        )
        if mounted.returncode != 0:
            return "vfs"
        subprocess.run(["umount", str(merged)], check=True)
    return "overlay2"


def _answers(engine: Engine) -> bool:
    return engine.run("version", "--format", "{{.Server.Version}}", check=False).returncode == 0


def start(progress: Callable[[str], None], directory: Path = DEPLOY_DIR) -> Engine:
    """The engine DOCKER_HOST names, or a dockerd of our own on a socket of our own."""
    if host := os.environ.get("DOCKER_HOST"):
        engine = Engine(host)
        if not _answers(engine):
            raise RuntimeError(f"DOCKER_HOST={host} does not answer")
        return engine
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / "docker.sock"
    engine = Engine(f"unix://{socket}", log=directory / "dockerd.log")
    if socket.exists() and _answers(engine):
        progress(f"using the running dockerd on {socket}")
        return engine  # left by a session that was killed: reused, and stopped by nobody
    driver = storage_driver(directory)
    progress(f"starting dockerd ({driver}) on {socket}; log {engine.log}")
    with engine.log.open("ab") as log:  # type: ignore[union-attr]
        engine.process = subprocess.Popen(
            [
                "dockerd", f"--storage-driver={driver}", f"--data-root={directory / 'root'}",
                f"--exec-root={directory / 'exec'}", f"--pidfile={directory / 'docker.pid'}",
                f"--host={engine.host}",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while not (socket.exists() and _answers(engine)):
        if engine.process.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            tail = engine.log.read_text()[-2000:]  # type: ignore[union-attr]
            raise RuntimeError(f"dockerd did not start:\n{tail}")
        time.sleep(0.5)
    return engine
