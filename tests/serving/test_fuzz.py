"""Property-based pass: schemathesis generates requests from each service's OpenAPI document
(valid ones and, in `all` mode, invalid ones; /feedback's with its credential) and none of
them may get a 5xx."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KEYS
from tests.serving.conftest import FEEDBACK_TOKEN, Service

pytestmark = pytest.mark.slow
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.parametrize("key", KEYS)
def test_no_generated_request_gets_a_5xx(
    services: dict[str, Service], key: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{services[key].url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--mode",
            "all",
            "--max-examples",
            "40",
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
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout or "passed" in result.stdout, result.stdout[-3000:]
