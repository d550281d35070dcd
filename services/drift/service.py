"""The drift service's state: the watched models, their last results, the jobs, the events,
and the runs on a schedule."""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

from contract.catalog import load_catalog
from contract.settings import get_settings
from services.api import auth
from services.drift import canary, detect, experiment, performance
from services.drift.gauges import DriftMetrics
from services.drift.retrain import Job, Retrainer
from services.drift.settings import DriftSettings

log = logging.getLogger("services.drift")
EVENTS = 200  # recent events kept for the index page and GET /events


class Drift:
    """The service's state: settings, the last result per model, jobs, events."""

    def __init__(self, settings: DriftSettings) -> None:
        catalog = load_catalog()
        unknown = sorted(set(settings.models) - set(catalog))
        if unknown:
            raise ValueError(f"DRIFT_MODELS names models not in the catalog: {unknown}")
        self.settings = settings
        self.specs = {k: s for k, s in catalog.items() if k in (settings.models or catalog)}
        self.metrics = DriftMetrics(self.specs)
        self.tracking_uri = get_settings().mlflow_tracking_uri
        import mlflow  # MLflow 3 resolves artifacts through its global URIs too

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.results: dict[str, detect.DriftResult] = {}
        self.performance: dict[str, list[performance.Performance]] = {}
        self.problems: dict[str, str] = {}  # the last run's outcome when it gave no verdict
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self.retrainer = Retrainer(settings, self._job_changed)
        self.canary = canary.Controller(settings, self.tracking_uri, self.specs, self._decided)
        self.admin = auth.Tokens.from_settings(
            "admin", settings.admin_token, settings.admin_token_file, name="DRIFT_ADMIN_TOKEN"
        )
        self.webhook = auth.Tokens.from_settings(
            "webhook",
            settings.webhook_token,
            settings.webhook_token_file,
            name="DRIFT_WEBHOOK_TOKEN",
        )
        self._run_lock = threading.Lock()  # one Evidently run at a time (CPU and memory)

    def event(self, kind: str, model: str | None, message: str) -> None:
        self.events.appendleft({"at": time.time(), "kind": kind, "model": model, "text": message})
        log.info("%s %s: %s", kind, model or "-", message)

    def _job_changed(self, job: Job) -> None:
        self.metrics.job(job)
        details = f" v{job.version} -> @{job.alias}: {job.gate}" if job.version else ""
        note = job.gate if job.state == "failed" else details
        self.event("retraining", job.model, f"job {job.id} {job.state}{note}")
        if job.state == "canary":  # passed the gate: ramped in, promoted or rolled back
            try:
                self.canary.start(job.model)
            except canary.CanaryRefused as exc:
                self.event("canary", job.model, f"not started for job {job.id}: {exc}")

    def _decided(self, rollout: canary.Canary, decision: str, text: str) -> None:
        self.metrics.canary.observe(rollout, decision)
        self.event("canary", rollout.model, f"{decision}: {text}")

    def experiment(self, model: str) -> experiment.Comparison:
        """@challenger against @champion on the labelled traffic of the performance window
        (an A/B split or a shadow), as one look with the whole error budget."""
        spec = self.spec(model)
        client = self.canary.client()
        versions = {}
        for alias in ("champion", "challenger"):
            try:
                versions[alias] = str(client.get_model_version_by_alias(model, alias).version)
            except Exception as exc:  # MLflow's not-found and connection errors alike
                raise LookupError(f"{model} has no @{alias}: {exc}") from exc
        since = time.time() - self.settings.performance_window_s
        arms = list(self.canary.arms(model, since, list(versions.values())).values())
        return experiment.compare(spec, arms[0], arms[1], 1.0, self.settings.canary_min_records)

    async def canaries(self) -> None:
        """Judge every canary whose step is over, every canary_tick_s seconds."""
        while True:
            await asyncio.sleep(self.settings.canary_tick_s)
            with contextlib.suppress(Exception):  # tick() logs what it could not judge
                await run_in_threadpool(self.canary.tick)

    def spec(self, model: str) -> Any:
        if model not in self.specs:
            raise HTTPException(404, f"unknown model {model!r}; watched: {sorted(self.specs)}")
        return self.specs[model]

    def check(self, model: str) -> detect.DriftResult:
        """One run now; EmptyWindow / NoReference say why there is no verdict."""
        spec = self.spec(model)
        report_dir = self.settings.state_dir / "reports"
        with self._run_lock:
            try:
                result = detect.run(spec, self.settings, self.tracking_uri, report_dir)
            except detect.EmptyWindow as exc:
                self.metrics.empty(model, exc.rows, time.time())
                self.problems[model] = str(exc)
                raise
            except Exception as exc:
                self.metrics.runs.labels(model, "failed").inc()
                self.problems[model] = f"{type(exc).__name__}: {exc}"
                self.event("drift", model, f"run failed: {self.problems[model]}")
                raise
        self.metrics.observe(result)
        self.results[model] = result
        self.problems.pop(model, None)
        drifted = [n for n, f in result.features.items() if f["drifted"]]
        verdict = "DRIFT" if result.dataset_drifted else "no drift"
        self.event(
            "drift",
            model,
            f"{verdict}: {len(drifted)}/{len(result.features)} features drifted "
            f"({', '.join(drifted) or 'none'}) over {result.rows} rows vs v{result.version}, "
            f"{result.seconds:.2f} s",
        )
        return result

    def performance_report(self, model: str) -> Path:
        """Where the model's Evidently report of its labelled traffic is written."""
        return self.settings.state_dir / "reports" / f"{model}.performance.html"

    def score(self, model: str) -> list[performance.Performance]:
        """Performance on labelled traffic now, per version and alias (newest first)."""
        spec = self.spec(model)
        try:
            report = self.performance_report(model)
            results = performance.run(spec, self.settings, self.tracking_uri, report=report)
        except Exception as exc:  # the log unreachable: said, and tried again next turn
            self.event("performance", model, f"run failed: {type(exc).__name__}: {exc}")
            raise
        self.metrics.performance.observe(model, results, time.time())
        self.performance[model] = results
        for result in results:
            if result.metrics:
                floors = [k for k in spec.floors if k in result.metrics]  # what is promised
                names = floors or sorted(result.metrics)[:4]
                shown = ", ".join(f"{k} {result.metrics[k]:.4g}" for k in names)
                self.event(
                    "performance", model,
                    f"v{result.version} @{result.alias}: {shown} over {result.records} labelled "
                    f"({result.coverage:.1%} of served, median delay {result.delay_s:.0f} s)",
                )  # fmt: skip
        return results

    def prune_log(self) -> int:
        """The prediction log's retention, once: rows deleted (a failure: the next turn)."""
        started = time.perf_counter()
        try:
            deleted = detect.prune_log(self.settings)
        except Exception as exc:  # sqlite3 / psycopg errors, timeouts
            self.event("retention", None, f"pruning the prediction log failed: {exc!r}")
            return 0
        seconds = time.perf_counter() - started
        log.info("prediction log: %d rows pruned (retention) in %.2f s", deleted, seconds)
        return deleted

    async def schedule(self) -> None:
        """Every model's drift and performance, every schedule_s seconds (a failed run is
        retried at the next turn), after the prediction log's retention."""
        while True:
            await run_in_threadpool(self.prune_log)
            for model in self.specs:
                with contextlib.suppress(Exception):  # already counted and recorded
                    await run_in_threadpool(self.check, model)
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self.score, model)
            await asyncio.sleep(self.settings.schedule_s)
