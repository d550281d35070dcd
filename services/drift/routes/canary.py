"""Champion against challenger on outcomes: the comparison now, and canary rollouts."""

from typing import Any

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from services.api.predlog import PredictionLogUnavailable
from services.drift.canary import CanaryRefused
from services.drift.deps import Act, DriftDep, ModelName, Read

router = APIRouter(prefix="/models")


@router.get("/{model}/experiment", dependencies=Read)
async def comparison(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """@challenger against @champion on the labelled traffic of the performance window."""
    drift.spec(model)
    try:
        found = await run_in_threadpool(drift.experiment, model)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except PredictionLogUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from exc
    return found.as_dict()


@router.get("/{model}/canary", dependencies=Read)
async def canary_state(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """The model's last canary: its step, share, each step's checks and the decision."""
    drift.spec(model)
    if model not in drift.canary.canaries:
        raise HTTPException(404, f"no canary of {model}; POST /models/{model}/canary starts one")
    return drift.canary.canaries[model].as_dict()


@router.post("/{model}/canary", status_code=201, dependencies=Act)
async def start_canary(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """Ramp @challenger in from the first step of DRIFT_CANARY_STEPS."""
    drift.spec(model)
    try:
        started = await run_in_threadpool(drift.canary.start, model)
    except CanaryRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    return started.as_dict()


@router.post("/{model}/canary/stop", dependencies=Act)
async def stop_canary(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """Roll the canary under way back now."""
    drift.spec(model)
    try:
        stopped = await run_in_threadpool(drift.canary.stop, model, "stopped by an operator")
    except CanaryRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    return stopped.as_dict()
