"""Credentials (services.api.auth), the retraining's limits (services.drift.retrain) and the
reload loop's (services.api.routing)."""

import base64
import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi import HTTPException
from pydantic import SecretStr

from contract import paths
from contract.catalog import get_spec
from services.api import auth
from services.api.routing import Lineup
from services.api.settings import ServeSettings
from services.api.store import ModelStore
from services.api.telemetry import ServiceMetrics
from services.drift import retrain
from services.drift.settings import DriftSettings

TOKEN = "s3cret-token-0123456789"


def tokens(*values: str) -> auth.Tokens:
    return auth.Tokens.from_settings("admin", SecretStr(",".join(values)), None, name="X_TOKEN")


def test_tokens_come_from_the_setting_or_a_secret_file(tmp_path: Path) -> None:
    assert tokens(TOKEN, "another-token-0123456789").allows("another-token-0123456789")
    file = tmp_path / "keys"
    file.write_text(f"{TOKEN}\n\n  second-token-0123456789  \n")
    from_file = auth.Tokens.from_settings("inference", None, file, name="X_KEYS")
    assert from_file.allows(TOKEN) and from_file.allows("second-token-0123456789")
    assert not from_file.allows(TOKEN[:-1])
    assert not auth.Tokens.from_settings("admin", None, None, name="X_TOKEN")  # none set


@pytest.mark.parametrize(
    ("value", "why"),
    [("change-me-please-0123", "example value"), ("Change-Me-too-0123456789", "example value"),
     ("short-one", r"9 characters, 16\+ wanted")],
)  # fmt: skip
def test_example_values_and_short_tokens_refuse_to_start(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        tokens(TOKEN, value)
    assert "X_TOKEN" in str(refused.value) and value not in str(refused.value)


def _status(scope: auth.Tokens, header: str | None, basic: bool = False) -> int:
    try:
        scope.check(header, basic=basic)
    except HTTPException as exc:
        if exc.status_code == 401:  # RFC 6750's challenge, Basic's where a browser may answer
            challenge = (exc.headers or {})["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="admin"')
            assert ('Basic realm="admin"' in challenge) == basic
        return exc.status_code
    return 200


def test_a_request_needs_the_right_bearer_token() -> None:
    admin = tokens(TOKEN)
    assert _status(admin, f"Bearer {TOKEN}") == 200
    assert _status(admin, f"bearer   {TOKEN} ") == 200
    assert _status(admin, None) == 401
    assert _status(admin, "Bearer wrong-token-0123456789") == 401
    assert _status(admin, f"Token {TOKEN}") == 401
    assert _status(admin, "Bearer") == 401
    # no token set: the route is disabled, whatever is presented
    assert _status(auth.Tokens("admin", []), f"Bearer {TOKEN}") == 403


def test_basic_is_taken_only_where_allowed_with_the_token_as_password() -> None:
    admin = tokens(TOKEN)
    basic = "Basic " + base64.b64encode(f"operator:{TOKEN}".encode()).decode()
    assert _status(admin, basic, basic=True) == 200
    assert _status(admin, basic, basic=False) == 401  # state-changing routes: bearer only
    wrong = "Basic " + base64.b64encode(b"operator:nope").decode()
    assert _status(admin, wrong, basic=True) == 401
    assert _status(admin, "Basic %%%not-base64", basic=True) == 401
    assert _status(admin, "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), basic=True) == 401


def test_local_tokens_are_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "admin-token"
    first = auth.local_token(path)
    assert len(first) >= auth.MIN_LENGTH and auth.local_token(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def settings(tmp_path: Path, **values: object) -> DriftSettings:
    return DriftSettings(state_dir=tmp_path / "state", workspace=tmp_path, **values)  # type: ignore[arg-type]


def test_the_kill_switch_refuses_every_submission(tmp_path: Path) -> None:
    retrainer = retrain.Retrainer(settings(tmp_path, retrain="off"), lambda job: None)
    try:
        with pytest.raises(retrain.RetrainingOff):
            retrainer.submit("titanic", "requested by an operator")
        assert retrainer.jobs == {}
    finally:
        retrainer.close()


def wait_for_job(retrainer: retrain.Retrainer, timeout: float = 60) -> retrain.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = retrainer.recent()
        if jobs and jobs[0].state not in retrain.ACTIVE:
            return jobs[0]
        time.sleep(0.1)
    raise AssertionError(f"no job finished in {timeout} s: {retrainer.recent()}")


def test_a_timed_out_retraining_stops_its_whole_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retrain, "STOP_GRACE_S", 2)
    pids = tmp_path / "pids"
    # the child leaves a grandchild that ignores nothing special: both must go
    command = f"sh -c 'sleep 300 & echo $! > {pids}; echo $$ >> {pids}; wait'"
    retrainer = retrain.Retrainer(
        settings(tmp_path, retrain_command=command, retrain_timeout_s=1.5), lambda job: None
    )
    try:
        retrainer.submit("titanic", "test")
        job = wait_for_job(retrainer)
    finally:
        retrainer.close()
    assert job.state == "failed" and job.gate == "timed out after 1.5 s"
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)  # reaped by init once killed
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in started
    )


def test_a_job_reads_canary_only_once_its_canary_has_started(tmp_path: Path) -> None:
    """The hook (the drift service starts the canary there) acts on a job's end before any
    client can read that end: a loop that sees "canary" and asks for the canary finds it
    (the loop demo read "canary" and got a 404 for the canary, 75 ms too early)."""
    record = paths.registry_record("titanic", tmp_path)
    record.parent.mkdir(parents=True)
    body = json.dumps({"version": 2, "alias": "challenger", "canary": True, "reason": "met"})
    script = tmp_path / "register.sh"  # what register writes (the command is a format string)
    script.write_text(f"echo {shlex.quote(body)} > {shlex.quote(str(record))}\n")
    command = f"sh {script}"
    seen: list[tuple[str, str]] = []  # (the end the hook is told, what clients read then)

    def hook(job: retrain.Job) -> None:
        if job.state not in retrain.ACTIVE:
            seen.append((job.state, retrainer.jobs[job.id].state))
            time.sleep(0.5)  # a slow canary start: clients still read the job as running

    retrainer = retrain.Retrainer(settings(tmp_path, retrain_command=command), hook)
    try:
        retrainer.submit("titanic", "test")
        job = wait_for_job(retrainer)
    finally:
        retrainer.close()
    assert seen == [("canary", "running")]
    assert (job.state, job.version, job.alias, job.finished_at is not None) == (
        "canary", "2", "challenger", True,
    )  # fmt: skip


def test_two_retrainings_in_one_workspace_take_turns(tmp_path: Path) -> None:
    log = tmp_path / "held.log"
    held = threading.Event()

    def hold() -> None:
        with retrain.workspace_lock(tmp_path, 30, log.open("ab")):
            held.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    started = time.monotonic()
    with log.open("ab") as output, retrain.workspace_lock(tmp_path, 30, output):
        waited = time.monotonic() - started
    holder.join()
    assert waited >= 1.0
    assert "waiting for another retraining" in log.read_text()
    with (
        pytest.raises(TimeoutError),
        retrain.workspace_lock(tmp_path, 0.5, log.open("ab")),
        retrain.workspace_lock(tmp_path, 0.5, log.open("ab")),
    ):
        pass


def test_a_lock_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl, sys, time; h = open(sys.argv[1], 'a'); "
            "fcntl.flock(h, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)",
            str(tmp_path / retrain.LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(TimeoutError),
            retrain.workspace_lock(tmp_path, 0.5, open(os.devnull, "wb")),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with retrain.workspace_lock(tmp_path, 5, open(os.devnull, "wb")):  # free once it died
        pass


class BrokenStore(ModelStore):
    """A registry answer the code did not expect (fault injection: a bug, not an outage)."""

    def fetch(self, key: str, alias: str) -> Any:
        raise KeyError("aliases")


def test_an_unexpected_reload_failure_is_logged_counted_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = get_spec("titanic")
    metrics = ServiceMetrics(spec.task)
    store = BrokenStore("sqlite:///" + str(tmp_path / "none.db"), tmp_path / "cache", 1.0)
    models = Lineup(spec, ServeSettings(model="titanic"), store, metrics)
    for _ in range(2):
        assert models.reload() == models.versions()  # no exception leaves reload()
    assert models.problem == "KeyError: 'aliases'" and not models.ready
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    text = metrics.render()[0].decode()
    assert 'serving_model_reloads_total{model="titanic",outcome="failed"} 2.0' in text
