"""The deploy tier's fixtures: a Docker engine (started here when none runs), the images
built from the project's Dockerfile, and the compose stack up for the whole module.

They take what tests/deploy/background.py started on a thread of its own when collection
ended (the engine and the builds, beside the other tiers; the tier's tests run last, and the
first `up` begins when they do).

DEPLOY_KEEP_STACK=1 leaves the stack and the engine running at the end, to look at them
(`docker-compose -p mlops-deploy-test ... logs`); the next run removes them first."""

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import unavailable
from tests.deploy import engine as docker
from tests.deploy.background import Start, Terminal
from tests.deploy.stack import ComposeStack
from tests.workspace import Project

START = pytest.StashKey[Start]()


@pytest.hookimpl(trylast=True)  # after -m/-k deselection and pytest's own reordering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tier's tests go last; its engine and builds begin now, beside the other tiers."""
    deploy = [item for item in items if item.get_closest_marker("deploy")]
    chosen = set(deploy)
    items[:] = [item for item in items if item not in chosen] + deploy
    if not deploy or config.option.collectonly or docker.why_unavailable():
        return
    start = Start(Terminal())
    config.stash[START] = start
    config.add_cleanup(start.finish)
    start.say(f"engine and images start beside the other tiers; the {len(deploy)} tests go last")
    start.begin()


@pytest.fixture(scope="session")
def started(request: pytest.FixtureRequest) -> Start:
    if why := docker.why_unavailable():
        unavailable(f"the deploy tier needs a Docker engine: {why}")
    start = request.config.stash.get(START, None)
    assert start is not None, "the deploy tier's start did not begin at collection"
    return start


@pytest.fixture(scope="session")
def progress(started: Start) -> Callable[[str], None]:
    """Lines on the terminal while pytest captures output: the tier runs for many minutes."""
    return started.say


@pytest.fixture(scope="package")  # stopped as soon as the tier is done, not at pytest's end
def engine(started: Start) -> Iterator[docker.Engine]:
    try:
        yield started.engine.result()
    finally:
        started.close_engine()


@pytest.fixture(scope="package")
def build_times(engine: docker.Engine, started: Start) -> dict[str, float]:
    """Every image of the test stack built (cached layers are reused), seconds per image."""
    return started.builds.result()


@pytest.fixture(scope="module")
def stack(
    engine: docker.Engine, build_times: dict[str, float], started: Start, project: Project
) -> Iterator[ComposeStack]:
    """The stack after its first `up`, its DVC remote seeded with the runs of the host tiers'
    reduced workspace (`project`); `down -v` at the end removes it and its volumes."""
    try:
        yield started.wanted(project.root / ".dvc" / "cache").result()
    finally:
        started.close_stack()
