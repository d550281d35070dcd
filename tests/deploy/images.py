"""The images the deploy tier runs: the project's three, built from its own Dockerfile on a
Python base made from Debian's packages, and stand-ins for the third-party images that no
registry reachable here serves (tests/deploy/images/Dockerfile says which and why)."""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from contract.paths import ROOT
from tests.deploy.engine import DEPLOY_DIR, Engine

TAG = "test"
PROJECT_TARGETS = ("runtime", "trainer", "load")
STAND_INS = ("postgres", "redis", "s3", "prometheus", "alertmanager", "nginx", "triton")
STAND_IN_DOCKERFILE = Path("tests/deploy/images/Dockerfile")
# What python:3.11-slim-bookworm offers the Dockerfile: python, pip, CA certificates
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
MIRROR = os.environ.get("DEPLOY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
Progress = Callable[[str], None]
MIN_FREE_GIB = 25  # images, build cache, containers and volumes of one run (overlay2)
CACHE_GIB = 15


def base_image(engine: Engine, progress: Progress) -> str:
    """A Debian bookworm image with Python 3.11 (debootstrap + docker import), made once."""
    digest = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
    tag = f"mlops-reference-test/python-base:bookworm-{digest}"
    if engine.has_image(tag):
        return tag
    progress(f"making {tag} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(dir=DEPLOY_DIR) as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             "bookworm", str(rootfs), MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        # pip installs into the image's Python, as in the official image
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=True, timeout=60)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        engine.run(
            "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", tag,
            stdin=tar.stdout, timeout=600,
        )  # fmt: skip
        tar.wait(timeout=60)
    return tag


def torch_wheel_image(engine: Engine, progress: Progress) -> str | None:
    """An image holding the PyTorch wheel uv.lock names, where this machine has the file
    (None: the build downloads it from PyTorch's index)."""
    found = re.search(r'path = "(/opt/wheels/torch-[^"]+\.whl)"', (ROOT / "uv.lock").read_text())
    wheel = Path(found.group(1)) if found else None
    if wheel is None or not wheel.exists():
        return None
    tag = f"mlops-reference-test/torch-wheel:{wheel.stat().st_size}"
    if not engine.has_image(tag):
        progress(f"importing {wheel.name} as {tag}")
        tar = subprocess.Popen(
            ["tar", "-C", "/", "-c", str(wheel.relative_to("/"))], stdout=subprocess.PIPE
        )
        engine.run("import", "-", tag, stdin=tar.stdout, timeout=600)
        tar.wait(timeout=60)
    return tag


def ca_bundle() -> str | None:
    """This machine's CA bundle for pip/uv inside builds (a build secret, never in an image)."""
    for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if (value := os.environ.get(name)) and Path(value).is_file():
            return value
    return None


def build(engine: Engine, target: str, tag: str, progress: Progress, *options: str) -> float:
    """docker build of one target; its log beside the engine's. Returns the seconds taken."""
    log = DEPLOY_DIR / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
    secret = ("--secret", f"id=ca-certificates,src={bundle}") if (bundle := ca_bundle()) else ()
    progress(f"docker build --target {target} -t {tag} (log {log})")
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(
            [engine.docker, "build", "--progress=plain", "--target", target, "-t", tag,
             *secret, *options, "."],
            cwd=ROOT, env=engine.env(), stdout=out, stderr=subprocess.STDOUT, timeout=2400,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"building {tag} failed:\n{log.read_text()[-4000:]}")
    return time.monotonic() - started


def build_all(engine: Engine, progress: Progress) -> dict[str, float]:
    """Every image the test stack runs, by tag, with the seconds each build took."""
    free = shutil.disk_usage(DEPLOY_DIR).free / 2**30
    assert free > MIN_FREE_GIB, f"{free:.0f} GiB free in {DEPLOY_DIR}, {MIN_FREE_GIB} needed"
    base = base_image(engine, progress)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    args = [
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "--build-arg",
        f"GIT_COMMIT={commit.stdout.strip()}",
    ]
    if wheel := torch_wheel_image(engine, progress):
        args += ["--build-arg", f"TORCH_WHEEL_SOURCE={wheel}"]
    times = {}
    for target in PROJECT_TARGETS:
        tag = f"mlops-reference/{target}:{TAG}"
        times[tag] = build(engine, target, tag, progress, *args)
    for target in STAND_INS:
        tag = f"mlops-reference-test/{target}:{TAG}"
        options = ("-f", str(STAND_IN_DOCKERFILE), "--build-arg", f"BASE={base}")
        times[tag] = build(engine, target, tag, progress, *options)
    # earlier runs' images and cache beyond a bound: the data root stays bounded
    engine.run("image", "prune", "--force", timeout=600)
    engine.run("builder", "prune", "--force", f"--keep-storage={CACHE_GIB}GB", timeout=600)
    return times
