"""The index page, the probes, the gauges and the events."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.drift import pages
from services.drift.deps import DriftDep, Read

router = APIRouter()


@router.get("/", response_class=HTMLResponse, dependencies=Read)
async def index(drift: DriftDep) -> str:
    """Every model's last verdict, the retraining jobs and the recent events."""
    return pages.index(drift)


@router.get("/livez")
async def livez() -> dict[str, str]:
    """200 while the process answers."""
    return {"status": "live"}


@router.get("/readyz")
async def readyz(drift: DriftDep) -> dict[str, Any]:
    """200 once started (Evidently imported): runs and webhooks are served."""
    return {"status": "ready", "models": sorted(drift.specs)}


@router.get("/metrics")
async def metrics(drift: DriftDep) -> Response:
    """Prometheus gauges: drift per model and feature, window rows, runs, retraining."""
    return Response(generate_latest(drift.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/events", dependencies=Read)
async def events(drift: DriftDep) -> list[dict[str, Any]]:
    """What happened, newest first: runs, alerts, jobs."""
    return list(drift.events)
