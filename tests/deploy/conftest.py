"""The deploy tier's fixtures: a Docker engine (started here when none runs), the images
built from the project's Dockerfile, and the compose stack up for the whole module.

DEPLOY_KEEP_STACK=1 leaves the stack and the engine running at the end, to look at them
(`docker-compose -p mlops-deploy-test ... logs`); the next run removes them first."""

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy import engine as docker
from tests.deploy.images import build_all
from tests.deploy.stack import ComposeStack, reduced_params

KEEP = os.environ.get("DEPLOY_KEEP_STACK") == "1"


@pytest.fixture(scope="session")
def progress(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Lines on the terminal while pytest captures output: the tier runs for many minutes."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if reporter is None:
            return
        # pytest points file descriptor 1 at its capture file while fixtures run: the line
        # would only be shown with a failure
        paused = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with paused:
            reporter.write_line(f"[deploy] {line}")

    return say


@pytest.fixture(scope="package")  # stopped as soon as the tier is done, not at pytest's end
def engine(progress: Callable[[str], None]) -> Iterator[docker.Engine]:
    if why := docker.why_unavailable():
        pytest.skip(f"the deploy tier needs a Docker engine: {why}")
    running = docker.start(progress)
    try:
        yield running
    finally:
        if not KEEP:
            running.stop()


@pytest.fixture(scope="package")
def build_times(engine: docker.Engine, progress: Callable[[str], None]) -> dict[str, float]:
    """Every image of the test stack built (cached layers are reused), seconds per image."""
    return build_all(engine, progress)


@pytest.fixture(scope="module")
def stack(
    engine: docker.Engine,
    build_times: dict[str, float],
    progress: Callable[[str], None],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ComposeStack]:
    """The stack after its first `up`; `down -v` at the end removes it and its volumes."""
    folder: Path = tmp_path_factory.mktemp("compose")
    running = ComposeStack(engine, reduced_params(folder), folder / "compose.log", progress)
    running.down("--volumes", "--remove-orphans")  # a killed session's leftovers
    try:
        seconds = running.up()
        progress(f"first up: {seconds:.0f} s (log {running.log})")
        running.first_up_s = seconds
        yield running
    finally:
        try:
            running.compose("logs", "--no-color", "--tail", "200", timeout=120)
        finally:
            if not KEEP:
                running.down("--volumes", "--remove-orphans")
