"""Each watched model's drift: its last result, a run now, its report, a retraining by hand."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from services.api.predlog import PredictionLogUnavailable
from services.drift import detect
from services.drift.deps import Act, DriftDep, ModelName, Read
from services.drift.retrain import RetrainingOff

router = APIRouter(prefix="/models")


@router.get("", dependencies=Read)
async def models(drift: DriftDep) -> dict[str, Any]:
    """The last result (or why there is none) of every watched model."""
    return {
        key: drift.results[key].as_dict()
        if key in drift.results
        else {"problem": drift.problems.get(key, "no run yet")}
        for key in drift.specs
    }


@router.get("/{model}", dependencies=Read)
async def last_result(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """The model's last drift result."""
    drift.spec(model)
    if model not in drift.results:
        why = drift.problems.get(model, "no run yet")
        raise HTTPException(404, f"no drift result for {model}: {why}; POST /models/{model}/run")
    return drift.results[model].as_dict()


@router.post("/{model}/run", dependencies=Act)
async def run_now(model: ModelName, drift: DriftDep) -> dict[str, Any]:
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


@router.get("/{model}/report", response_class=HTMLResponse, dependencies=Read)
async def report(model: ModelName, drift: DriftDep) -> FileResponse:
    """The last run's Evidently report."""
    drift.spec(model)
    if model not in drift.results or not Path(drift.results[model].report).exists():
        raise HTTPException(404, f"no report for {model} yet; POST /models/{model}/run")
    return FileResponse(drift.results[model].report, media_type="text/html")


@router.post("/{model}/retrain", status_code=202, dependencies=Act)
async def retrain(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """Start a gated retraining of the model by hand (joins one already under way)."""
    drift.spec(model)
    try:
        job, new = drift.retrainer.submit(model, "requested by an operator")
    except RetrainingOff as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"job": job.as_dict(), "new": new}


@router.get("/{model}/performance", dependencies=Read)
async def last_performance(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """The model's last performance on labelled traffic, per version and alias."""
    drift.spec(model)
    if model not in drift.performance:
        raise HTTPException(404, f"no performance run for {model} yet; "
                            f"POST /models/{model}/performance/run")  # fmt: skip
    return {"model": model, "versions": [p.as_dict() for p in drift.performance[model]]}


@router.get("/{model}/performance/report", response_class=HTMLResponse, dependencies=Read)
async def performance_report(model: ModelName, drift: DriftDep) -> FileResponse:
    """Evidently's classification or regression report of the champion's labelled traffic,
    as of the last performance run."""
    drift.spec(model)
    path = drift.performance_report(model)
    if not path.exists():
        raise HTTPException(
            404,
            f"no performance report for {model}: too few labelled records, or none run yet "
            f"(POST /models/{model}/performance/run)",
        )
    return FileResponse(path, media_type="text/html")


@router.post("/{model}/performance/run", dependencies=Act)
async def score_now(model: ModelName, drift: DriftDep) -> dict[str, Any]:
    """Score the model on its labelled traffic now (the outcomes sent to /feedback)."""
    drift.spec(model)
    try:
        results = await run_in_threadpool(drift.score, model)
    except PredictionLogUnavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from exc
    return {"model": model, "versions": [p.as_dict() for p in results]}
