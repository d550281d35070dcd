"""The drift service: Evidently drift per model on a schedule and on demand, its gauges, HTML
reports, and the Alertmanager webhook that starts a gated retraining.

    python -m services.drift            # 127.0.0.1:8200 (DRIFT_* settings)
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from contract.catalog import load_catalog
from contract.settings import get_settings
from services.api import auth
from services.api.bodies import BodyRefused, read_body, replay
from services.api.inputs import UTF8
from services.api.predlog import PredictionLogUnavailable
from services.drift import detect, pages
from services.drift.gauges import DriftMetrics
from services.drift.retrain import Job, Retrainer, RetrainingOff
from services.drift.settings import DriftSettings

log = logging.getLogger("services.drift")
EVENTS = 200  # recent events kept for the index page and GET /events
MAX_BODY_BYTES = 2**20  # Alertmanager's notifications are a few KiB; the routes take no more


class BodyLimit:
    """A 413 for a body over `limit` bytes, declared or streamed, before a route (or its
    credential check: FastAPI reads the body first) holds it in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await read_body(scope, receive, self.limit)
        except BodyRefused as refused:
            detail = {"detail": refused.message}
            await Response(orjson.dumps(detail), refused.status, media_type="application/json")(
                scope, receive, send
            )
            return
        await self.app(scope, replay(body, receive), send)


# What an alert carries ends up in the events (pages, GET /events): valid text, bounded
Text = Annotated[str, UTF8, Field(max_length=1000)]


class Alert(BaseModel):
    """One alert of an Alertmanager webhook (the fields this service reads)."""

    status: Literal["firing", "resolved"]
    labels: dict[Text, Text]
    annotations: dict[Text, Text] = {}
    startsAt: Text = ""  # Alertmanager's names
    fingerprint: Text = ""


class Notification(BaseModel):
    """Alertmanager's webhook body (version 4)."""

    receiver: Text = ""
    status: Text = ""
    alerts: list[Alert] = Field(max_length=1000)


class Drift:
    """The service's state: settings, the last result per model, jobs, events."""

    def __init__(self, settings: DriftSettings) -> None:
        catalog = load_catalog()
        unknown = sorted(set(settings.models) - set(catalog))
        if unknown:
            raise ValueError(f"DRIFT_MODELS names models not in the catalog: {unknown}")
        self.settings = settings
        self.specs = {k: s for k, s in catalog.items() if k in (settings.models or catalog)}
        self.metrics = DriftMetrics(list(self.specs))
        self.tracking_uri = get_settings().mlflow_tracking_uri
        import mlflow  # MLflow 3 resolves artifacts through its global URIs too

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.results: dict[str, detect.DriftResult] = {}
        self.problems: dict[str, str] = {}  # the last run's outcome when it gave no verdict
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self.retrainer = Retrainer(settings, self._job_changed)
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
        """Every model, every schedule_s seconds (a failed run is retried at the next turn),
        after the prediction log's retention."""
        while True:
            await run_in_threadpool(self.prune_log)
            for model in self.specs:
                with contextlib.suppress(Exception):  # already counted and recorded
                    await run_in_threadpool(self.check, model)
            await asyncio.sleep(self.settings.schedule_s)


def create_app(settings: DriftSettings | None = None) -> FastAPI:
    drift = Drift(settings or DriftSettings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(__import__, "evidently")  # ~7 s, once, before the first run
        task = asyncio.create_task(drift.schedule()) if drift.settings.schedule_s else None
        yield
        if task is not None:
            task.cancel()
        drift.retrainer.close()

    app = FastAPI(title="drift service", description=__doc__, lifespan=lifespan)
    app.state.drift = drift
    add_routes(app, drift)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Response:
        """FastAPI's 422 without echoing the input: a lone surrogate in it (or in a key, which
        is in `loc`) would fail the answer's encoding (a 500)."""
        errors = [
            {"loc": [_printable(part) for part in error["loc"]], "msg": error["msg"]}
            for error in exc.errors()[:20]
        ]
        return Response(orjson.dumps({"detail": errors}), 422, media_type="application/json")

    return app


ModelName = Annotated[str, PathParam(description="catalog key")]


def _printable(part: Any) -> Any:
    return part.encode(errors="backslashreplace").decode()[:80] if isinstance(part, str) else part


def add_routes(app: FastAPI, drift: Drift) -> None:
    # Everything but the probes and /metrics shows logged data or changes state: a credential
    # (services.api.auth). Pages also take Basic for browsers; POSTs only a bearer token
    read = [Depends(auth.reader(drift.admin))]
    act = [Depends(auth.bearer(drift.admin))]
    hook = [Depends(auth.bearer(drift.webhook, drift.admin))]

    @app.get("/", response_class=HTMLResponse, dependencies=read)
    async def index() -> str:
        """Every model's last verdict, the retraining jobs and the recent events."""
        return pages.index(drift)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """200 while the process answers."""
        return {"status": "live"}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        """200 once started (Evidently imported): runs and webhooks are served."""
        return {"status": "ready", "models": sorted(drift.specs)}

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus gauges: drift per model and feature, window rows, runs, retraining."""
        return Response(generate_latest(drift.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/models", dependencies=read)
    async def models() -> dict[str, Any]:
        """The last result (or why there is none) of every watched model."""
        return {
            key: drift.results[key].as_dict()
            if key in drift.results
            else {"problem": drift.problems.get(key, "no run yet")}
            for key in drift.specs
        }

    @app.get("/models/{model}", dependencies=read)
    async def last_result(model: ModelName) -> dict[str, Any]:
        """The model's last drift result."""
        drift.spec(model)
        if model not in drift.results:
            why = drift.problems.get(model, "no run yet")
            raise HTTPException(
                404, f"no drift result for {model}: {why}; POST /models/{model}/run"
            )
        return drift.results[model].as_dict()

    @app.post("/models/{model}/run", dependencies=act)
    async def run_now(model: ModelName) -> dict[str, Any]:
        """Run the drift check now: 422 when the window holds too few predictions."""
        drift.spec(model)
        try:
            result = await run_in_threadpool(drift.check, model)
        except detect.EmptyWindow as exc:
            raise HTTPException(422, str(exc)) from exc
        except (detect.NoReference, PredictionLogUnavailable) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from exc
        except Exception as exc:  # ours, not the caller's: said plainly (and logged)
            raise HTTPException(500, f"drift run failed: {drift.problems[model]}") from exc
        return result.as_dict()

    @app.get("/models/{model}/report", response_class=HTMLResponse, dependencies=read)
    async def report(model: ModelName) -> FileResponse:
        """The last run's Evidently report."""
        drift.spec(model)
        if model not in drift.results or not Path(drift.results[model].report).exists():
            raise HTTPException(404, f"no report for {model} yet; POST /models/{model}/run")
        return FileResponse(drift.results[model].report, media_type="text/html")

    @app.post("/models/{model}/retrain", status_code=202, dependencies=act)
    async def retrain(model: ModelName) -> dict[str, Any]:
        """Start a gated retraining of the model by hand (joins one already under way)."""
        drift.spec(model)
        try:
            job, new = drift.retrainer.submit(model, "requested by an operator")
        except RetrainingOff as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"job": job.as_dict(), "new": new}

    @app.get("/retraining", dependencies=read)
    async def jobs() -> list[dict[str, Any]]:
        """Retraining jobs, newest first."""
        return [job.as_dict() for job in drift.retrainer.recent()]

    @app.get("/retraining/{job_id}", dependencies=read)
    async def job(job_id: str) -> dict[str, Any]:
        """One job, with the end of its log."""
        found = drift.retrainer.jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"no retraining job {job_id!r}")
        path = Path(found.log_file)
        tail = path.read_text(errors="replace")[-8000:] if path.exists() else ""
        return found.as_dict() | {"log_tail": tail}

    @app.get("/events", dependencies=read)
    async def events() -> list[dict[str, Any]]:
        """What happened, newest first: runs, alerts, jobs."""
        return list(drift.events)

    @app.post("/alerts", status_code=202, dependencies=hook)
    async def alerts(notification: Notification) -> Response:
        """Alertmanager's webhook: a firing alert with `action=retrain` retrains its model."""
        started, refused = [], []
        for alert in notification.alerts:
            model = alert.labels.get("model", "")
            name = alert.labels.get("alertname", "?")
            if alert.status != "firing" or alert.labels.get("action") != "retrain":
                drift.event("alert", model or None, f"{name} {alert.status}: no action")
                continue
            if model not in drift.specs:
                refused.append({"alert": name, "error": f"unknown model {model!r}"})
                continue
            if drift.settings.retrain == "off":
                drift.event("alert", model, f"{name} firing: retraining is off (DRIFT_RETRAIN)")
                continue
            drift.event("alert", model, f"{name} firing: retraining requested")
            job, new = drift.retrainer.submit(model, f"alert {name}")
            started.append({"job": job.id, "model": model, "new": new})
        status = 422 if refused and not started else 202
        body = {"retraining": started, "refused": refused}
        return Response(orjson.dumps(body), status, media_type="application/json")

    @app.post("/alerts/log", dependencies=hook)
    async def alert_log(notification: Notification) -> dict[str, int]:
        """Alertmanager's webhook for every other alert: recorded as events."""
        for alert in notification.alerts:
            name = alert.labels.get("alertname", "?")
            summary = alert.annotations.get("summary", "")
            drift.event("alert", alert.labels.get("model"), f"{name} {alert.status}: {summary}")
        return {"recorded": len(notification.alerts)}
