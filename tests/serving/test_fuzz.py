"""Property-based pass: schemathesis generates requests from each service's OpenAPI document
(valid ones and, in `all` mode, invalid ones; /feedback's with its credential) and none of
them may get a 5xx.

Its phases: the examples; the coverage phase, which sends each operation's boundary and
negative cases (titanic's 576 requests in 12 s); then FUZZED_PER_OPERATION random cases an
operation (titanic's 96 requests in 5 s: with 40 they were 366 requests and 20 s, half of
the run). A run keeps one service's worker busy and leaves most of the other core idle, so
the eighteen runs go CONCURRENT at a time from the module's start; each test waits for its
own model's run and reports it."""

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import KEYS
from tests.serving.conftest import FEEDBACK_TOKEN, Service

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
FUZZED_PER_OPERATION = 10
CONCURRENT = 2


def fuzz(url: str, report_dir: Path) -> subprocess.CompletedProcess[str]:
    """One service's schemathesis run."""
    return subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--mode",
            "all",
            "--max-examples",
            str(FUZZED_PER_OPERATION),
            "--seed",
            "20261121",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--exclude-path",
            "/admin/reload",
            # /feedback's handler, not only its 401: outcomes of any shape, for ids never served
            "--header",
            f"Authorization: Bearer {FEEDBACK_TOKEN}",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "30",
            "--no-color",
            "--report-dir",
            str(report_dir),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=report_dir,
    )


@pytest.fixture(scope="module")
def fuzzed(
    services: dict[str, Service], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Every model's run, started CONCURRENT at a time in catalog order."""
    with ThreadPoolExecutor(CONCURRENT) as pool:
        runs = {
            key: pool.submit(fuzz, services[key].url, tmp_path_factory.mktemp(f"fuzz-{key}"))
            for key in KEYS
        }
        yield runs
        for run in runs.values():
            run.cancel()


@pytest.mark.parametrize("key", KEYS)
def test_no_generated_request_gets_a_5xx(
    fuzzed: dict[str, Future[subprocess.CompletedProcess[str]]], key: str
) -> None:
    result = fuzzed[key].result()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout, result.stdout[-3000:]
