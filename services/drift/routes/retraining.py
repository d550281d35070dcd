"""The retraining jobs and their logs."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException

from services.drift.deps import DriftDep, Read

router = APIRouter(prefix="/retraining")


@router.get("", dependencies=Read)
async def jobs(drift: DriftDep) -> list[dict[str, Any]]:
    """Retraining jobs, newest first."""
    return [job.as_dict() for job in drift.retrainer.recent()]


@router.get("/{job_id}", dependencies=Read)
async def job(job_id: str, drift: DriftDep) -> dict[str, Any]:
    """One job, with the end of its log."""
    found = drift.retrainer.jobs.get(job_id)
    if found is None:
        raise HTTPException(404, f"no retraining job {job_id!r}")
    path = Path(found.log_file)
    tail = path.read_text(errors="replace")[-8000:] if path.exists() else ""
    return found.as_dict() | {"log_tail": tail}
