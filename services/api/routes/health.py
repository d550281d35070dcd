"""Liveness, readiness and the Prometheus metrics of the service."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from services.api.deps import ServiceDep
from services.api.responses import error_response, json_response

router = APIRouter()


@router.get("/livez")
async def livez() -> Response:
    """200 while the process answers."""
    return json_response({"status": "live"})


@router.get("/readyz", responses={503: {"description": "No model loaded (the reason says why)"}})
async def readyz(service: ServiceDep) -> Response:
    """200 once a champion is loaded and checked, 503 before (with the reason)."""
    lineup = service.lineup
    if not lineup.ready:
        return error_response(503, f"not ready: {lineup.problem}")
    body: dict[str, Any] = {
        "status": "ready",
        "model": service.spec.key,
        "versions": lineup.versions(),
    }
    if lineup.problem:  # serving the loaded versions; the last reload failed
        body["reload_problem"] = lineup.problem
    if service.spec.features:  # entity keys: served, or why not (records still are)
        body["features"] = (
            service.entities.online.describe()
            if service.entities
            else {"problem": service.features_problem}
        )
    return json_response(body)


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    """Prometheus metrics of every worker of this service."""
    body, content_type = service.metrics.render()
    return Response(body, media_type=content_type)
