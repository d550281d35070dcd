"""Operator routes: each needs SERVE_ADMIN_TOKEN as a bearer token."""

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from services.api.deps import AdminDep, ServiceDep
from services.api.responses import json_response

router = APIRouter(prefix="/admin", dependencies=[AdminDep])


@router.post("/reload")
async def reload(service: ServiceDep) -> Response:
    """Follow the registry's aliases now instead of at the next poll (this worker); needs
    SERVE_ADMIN_TOKEN as a bearer token."""
    versions = await run_in_threadpool(service.lineup.reload)
    return json_response(
        {"versions": versions, "problem": service.lineup.problem or None},
        200 if service.lineup.ready else 503,
    )
