"""Retraining started by a drift alert: the model's DVC stages, one job at a time.

`dvc repro --force register@<model>` re-runs the model's stages on what its sources hold
now (snapshot@<model> takes the labelled records of this service's prediction log, which
join training where the catalog entry's `production.join` says so), and `register`'s
quality gate decides: the new version becomes `champion` only if it meets the floors and
is not worse than the champion (on the snapshot's production window too), otherwise
`challenger`. DVC locks the workspace, so jobs run one after another, and a lock file in
the workspace keeps a second drift service (a replica, or one started by hand) from
running beside them; an alert for a model whose job is already queued or running joins
that job. Each job's output goes to its
own log file; a job past DRIFT_RETRAIN_TIMEOUT_S is stopped with its whole process group.
"""

import contextlib
import fcntl
import json
import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from contract import paths
from services.api.predlog import sqlite_path
from services.drift.settings import DriftSettings

log = logging.getLogger("services.drift.retrain")
KEEP = 100  # jobs remembered (and shown) per service
ACTIVE = ("queued", "running")
LOCK = ".retraining.lock"  # in the workspace: one retraining at a time, whoever starts it
STOP_GRACE_S = 30  # SIGTERM to SIGKILL for a timed-out job's process group


class RetrainingOff(RuntimeError):
    """DRIFT_RETRAIN=off: no route and no alert starts a retraining."""


@dataclass
class Job:
    id: str
    model: str
    reason: str  # what asked for it: the alert, or an operator
    command: str
    log_file: str
    state: str = "queued"  # queued, running, promoted, canary, challenger, failed
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    returncode: int | None = None
    version: str | None = None  # what register made of it
    alias: str | None = None
    gate: str | None = None
    alerts: int = 1  # alerts that asked for this job

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retrainer:
    """A queue of jobs and the thread that runs them; `on_change(job)` feeds the metrics."""

    def __init__(self, settings: DriftSettings, on_change: Callable[[Job], None]) -> None:
        self.settings, self.on_change = settings, on_change
        self.folder = settings.state_dir / "retraining"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, Job] = self._load()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="retraining", daemon=True)
        self._thread.start()

    def _load(self) -> dict[str, Job]:
        """Jobs of earlier runs of the service; one cut off by a restart is marked failed."""
        index = self.folder / "jobs.json"
        jobs = {j["id"]: Job(**j) for j in json.loads(index.read_text())} if index.exists() else {}
        for job in jobs.values():
            if job.state in ACTIVE:
                job.state, job.gate = "failed", "the drift service stopped before it finished"
        return jobs

    def _save(self) -> None:
        index = self.folder / "jobs.json"
        recent = sorted(self.jobs.values(), key=lambda j: j.queued_at)[-KEEP:]
        index.with_suffix(".tmp").write_text(json.dumps([j.as_dict() for j in recent], indent=1))
        index.with_suffix(".tmp").replace(index)

    def submit(self, model: str, reason: str) -> tuple[Job, bool]:
        """(the job, whether it is new): an active job of the same model absorbs the request."""
        if self.settings.retrain == "off":
            raise RetrainingOff("retraining is off (DRIFT_RETRAIN=off)")
        with self._lock:
            for job in self.jobs.values():
                if job.model == model and job.state in ACTIVE:
                    job.alerts += 1
                    return job, False
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            job = Job(
                id=job_id,
                model=model,
                reason=reason,
                command=self.settings.retrain_command.format(model=model),
                log_file=str(self.folder / f"{job_id}-{model}.log"),
            )
            self.jobs[job.id] = job
            self._save()
        log.info("retraining %s queued (%s): %s", model, reason, job.command)
        self.on_change(job)
        self._queue.put(job)
        return job, True

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                ended = self._run(job)
            except Exception as exc:  # a job must never take the worker down
                log.exception("retraining %s: %s", job.model, exc)
                ended, job.gate = "failed", f"{type(exc).__name__}: {exc}"
            # The hook acts on the end (a passed gate starts the canary) before any client
            # can read it: a job read as "canary" has its canary under way
            finished_at = time.time()
            self.on_change(replace(job, state=ended, finished_at=finished_at))
            job.state, job.finished_at = ended, finished_at
            with self._lock:
                self._save()
            log.info("retraining %s finished: %s (%s)", job.model, job.state, job.gate)

    def _run(self, job: Job) -> str:
        """Run the job's command; the state it ended in (the job stays "running" until the
        worker has told `on_change`)."""
        job.state, job.started_at = "running", time.time()
        self.on_change(job)
        workspace = self.settings.workspace
        record = paths.registry_record(job.model, workspace)
        before = record.stat().st_mtime if record.exists() else 0.0
        # The stages run `python -m ...` and `dvc` by name: this environment's first
        env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            # snapshot@<model> exports the labelled records of the log this service reads
            "PREDICTION_LOG": absolute(self.settings.prediction_log),
        }
        timeout = self.settings.retrain_timeout_s
        with open(job.log_file, "ab") as output, workspace_lock(workspace, timeout, output):
            output.write(f"$ {job.command}   (in {workspace})\n".encode())
            output.flush()
            child = subprocess.Popen(
                shlex.split(job.command),
                cwd=workspace,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout stops all of it
            )
            try:
                job.returncode = child.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_group(child)
                job.gate = f"timed out after {timeout:g} s"
                return "failed"
        if job.returncode != 0:
            job.gate = f"exit status {job.returncode}: see {job.log_file}"
            return "failed"
        if not record.exists() or record.stat().st_mtime <= before:
            job.gate = f"the command did not register a version ({record})"
            return "failed"
        registered = json.loads(record.read_text())
        job.version, job.alias = str(registered["version"]), registered["alias"]
        job.gate = registered.get("reason", "")
        if registered.get("canary"):  # passed the gate; its canary decides (production.rollout)
            return "canary"
        return "promoted" if job.alias == "champion" else "challenger"

    def active(self, model: str) -> bool:
        return any(j.model == model and j.state in ACTIVE for j in self.jobs.values())

    def recent(self, model: str | None = None) -> list[Job]:
        jobs = [j for j in self.jobs.values() if model in (None, j.model)]
        return sorted(jobs, key=lambda j: j.queued_at, reverse=True)

    def close(self) -> None:
        self._queue.put(None)


@contextlib.contextmanager
def workspace_lock(workspace: Path, timeout: float, output: Any) -> Iterator[None]:
    """An exclusive flock on the workspace's lock file, waited for up to `timeout` seconds
    (TimeoutError after); the kernel drops it if the service dies."""
    with open(workspace / LOCK, "a") as handle:
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{workspace / LOCK} held for {timeout:g} s") from None
                if not said:
                    output.write(b"waiting for another retraining in this workspace\n")
                    output.flush()
                    said = True
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def absolute(url: str) -> str:
    """A SQLite log's URL with its path made absolute (as this service resolves it): the
    job runs in the workspace, which resolves relative paths from itself."""
    return f"sqlite:///{sqlite_path(url)}" if url.startswith("sqlite:///") else url


def stop_group(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's process group, SIGKILL after STOP_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
