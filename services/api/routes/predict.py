"""The REST contract: named-field records in, predictions with the model version out."""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask

from services.api.deps import ServiceDep
from services.api.responses import json_response

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "Invalid input: `detail` names each field and what was expected"},
    413: {"description": "Body or record count over the limit"},
    429: {"description": "Too many requests in flight; retry after `Retry-After` seconds"},
    503: {"description": "No model loaded yet (see /readyz), or the prediction log is down"},
    504: {"description": "Inference took longer than the service's timeout"},
}
PATH = "/predict"

router = APIRouter()


@router.post(PATH, responses=ERROR_RESPONSES)
async def predict(request: Request, service: ServiceDep) -> Response:
    """Predictions for 1..N named-field records, with the model version that made them."""
    request_id = request.state.request_id
    answer, assignment, batch = await service.predict(
        request.state.body, request_id, request.state.unit, request.scope["state"]
    )
    await service.log_records(answer, batch)  # committed before the answer is sent
    task = None
    if assignment.shadow is not None:
        task = BackgroundTask(
            service.score_shadow, assignment, batch.records, request_id, answer["predictions"]
        )
    return json_response(answer, background=task)
