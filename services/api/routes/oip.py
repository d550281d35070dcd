"""Open Inference Protocol v2 routes (services.api.oip does the protocol's work)."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from services.api import oip
from services.api.deps import ServiceDep
from services.api.responses import json_response

INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": oip.INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

Name = Annotated[str, Path(description="the model's name")]  # its one value: app.document_model

router = APIRouter(prefix="/v2")


@router.get("")
async def server_metadata() -> Response:
    """OIP v2 server metadata."""
    return json_response(oip.SERVER)


@router.get("/health/live")
async def server_live() -> Response:
    """OIP v2 liveness."""
    return json_response({"live": True})


@router.get("/health/ready")
async def server_ready(service: ServiceDep) -> Response:
    """OIP v2 readiness: 503 until the model is loaded."""
    ready = service.lineup.ready
    return json_response({"ready": ready}, 200 if ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(
    name: Name, request: Request, service: ServiceDep, version: str | None = None
) -> Response:
    """OIP v2 model metadata: the graph's input and output tensors."""
    model = oip.pick(service, name, version, request.state.unit)
    loaded = [v for v in service.lineup.versions().values() if v]
    return json_response(oip.metadata(model, loaded))


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(
    name: Name, request: Request, service: ServiceDep, version: str | None = None
) -> Response:
    """OIP v2 model readiness."""
    oip.pick(service, name, version, request.state.unit)  # raises 404 / 503
    return json_response({"name": name, "ready": True})


@router.post("/models/{name}/infer", openapi_extra=INFER_DOC)
@router.post("/models/{name}/versions/{version}/infer", openapi_extra=INFER_DOC)
async def infer(
    name: Name, request: Request, service: ServiceDep, version: str | None = None
) -> Response:
    """OIP v2 inference, JSON or with the binary tensor extension."""
    model = oip.pick(service, name, version, request.state.unit)
    return await oip.infer(service, model, request)
