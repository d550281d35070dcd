"""A tier that cannot run here says why: it fails in CI (CI=true) and is skipped elsewhere."""

import socket

import pytest

from tests.conftest import SERVERS, listening, unavailable


def test_outside_ci_a_missing_server_skips_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no postgres server"):
        unavailable("no postgres server on 127.0.0.1:5432")


def test_in_ci_a_missing_server_fails_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no Docker engine.*CI=true"):
        unavailable("no Docker engine")


def test_a_closed_port_is_not_listening() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]  # bound, never listening
        assert not listening(("127.0.0.1", port))


def test_every_server_marker_is_declared_and_says_how_to_start_it(
    pytestconfig: pytest.Config,
) -> None:
    declared = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    for marker, (_, start) in SERVERS.items():
        assert marker in declared and start
