"""True outcomes of logged predictions (services.api.feedback): each needs SERVE_FEEDBACK_TOKEN."""

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from services.api import feedback, feedback_inputs
from services.api.bodies import BodyRefused, read_body
from services.api.deps import FeedbackDep, ServiceDep
from services.api.responses import error_response, json_response
from services.api.routes.oip import Name
from services.api.service import ModelService

RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "Invalid outcome: `detail` names each field and what was expected"},
    404: {"description": "No logged prediction for a request id and position (nothing stored)"},
    409: {"description": "Another outcome is stored for a record (nothing stored)"},
    413: {"description": "Body or outcome count over the limit"},
    503: {"description": "The prediction log's database is unavailable (nothing stored)"},
}

router = APIRouter(dependencies=[FeedbackDep], responses=RESPONSES)


async def _body(request: Request, service: ModelService) -> tuple[type[BaseModel], bytes]:
    """The task's feedback model and the body, read up to SERVE_MAX_BODY_BYTES."""
    model = service.feedback_model
    if model is None:
        task = service.spec.task
        raise HTTPException(404, f"{service.spec.key} takes no feedback: a {task} model has no "
                            "ground truth to send back")  # fmt: skip
    if service.settings.prediction_log in ("", "off"):
        raise HTTPException(503, "no prediction log (SERVE_PREDICTION_LOG=off): no outcome "
                            "can be joined to a prediction")  # fmt: skip
    try:
        body = await read_body(request.scope, request.receive, service.settings.max_body_bytes)
    except BodyRefused as refused:
        raise HTTPException(refused.status, refused.message) from refused
    return model, body


async def _store(service: ModelService, items: list[feedback.Item]) -> list[str] | Response:
    """The statuses, or the 404 / 409 saying which records and why (nothing stored)."""
    try:
        return await run_in_threadpool(service.store_feedback, items)
    except feedback.UnknownPrediction as exc:
        return error_response(404, f"{exc} in {service.spec.key}'s log", exc.missing)
    except feedback.ConflictingOutcome as exc:
        return error_response(409, f"{exc}: the first outcome stands", exc.conflicts)


@router.post("/feedback")
async def post_feedback(request: Request, service: ServiceDep) -> Response:
    """The true outcomes of logged predictions, by request id and record position."""
    model, body = await _body(request, service)
    items = feedback_inputs.parse(model, body)
    statuses = await _store(service, items)
    if isinstance(statuses, Response):
        return statuses
    return json_response(_summary(service, items, statuses))


@router.post("/v2/models/{name}/feedback")
async def post_feedback_tensors(name: Name, request: Request, service: ServiceDep) -> Response:
    """The OIP form of /feedback: request_id, position and outcome as tensors."""
    if name != service.spec.key:
        raise HTTPException(404, f"unknown model {name!r}; this service serves {service.spec.key}")
    model, body = await _body(request, service)
    items, request_id = feedback_inputs.parse_tensors(model, body)
    statuses = await _store(service, items)
    if isinstance(statuses, Response):
        return statuses
    status = {"name": "status", "datatype": "BYTES", "shape": [len(statuses)], "data": statuses}
    answer: dict[str, Any] = {"model_name": name, "outputs": [status]}
    return json_response(answer | ({"id": request_id} if request_id is not None else {}))


def _summary(
    service: ModelService, items: list[feedback.Item], statuses: list[str]
) -> dict[str, Any]:
    return {
        "model": service.spec.key,
        "stored": statuses.count(feedback.STORED),
        "duplicates": statuses.count(feedback.DUPLICATE),
        "outcomes": [
            {"request_id": r, "position": p, "status": s}
            for (r, p, _), s in zip(items, statuses, strict=True)
        ],
    }
