"""The dependencies the drift routes declare: the service's state and its three credentials.

Everything but the probes and /metrics shows logged data or changes state: a credential
(services.api.auth). Pages also take Basic for browsers; POSTs only a bearer token.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam

from services.api import auth
from services.drift.service import Drift


async def get_drift(request: Request) -> Drift:
    """The drift service's state (create_app puts it in the app's state)."""
    drift: Drift = request.app.state.drift
    return drift


DriftDep = Annotated[Drift, Depends(get_drift)]
ModelName = Annotated[str, PathParam(description="catalog key")]


async def require_reader(request: Request, drift: DriftDep) -> None:
    """DRIFT_ADMIN_TOKEN as a bearer token, or as Basic's password (browsers)."""
    await auth.reader(drift.admin)(request)


async def require_admin(credentials: auth.Header, drift: DriftDep) -> None:
    """DRIFT_ADMIN_TOKEN as a bearer token."""
    await auth.bearer(drift.admin)(credentials)


async def require_webhook(credentials: auth.Header, drift: DriftDep) -> None:
    """DRIFT_WEBHOOK_TOKEN (Alertmanager's) or DRIFT_ADMIN_TOKEN as a bearer token."""
    await auth.bearer(drift.webhook, drift.admin)(credentials)


Read = [Depends(require_reader)]
Act = [Depends(require_admin)]
Hook = [Depends(require_webhook)]
