"""The dependencies routes declare: the one service of this app, and its credentials."""

from typing import Annotated

from fastapi import Depends, Request

from services.api import auth
from services.api.service import ModelService


async def get_service(request: Request) -> ModelService:
    """The model service this app serves (create_app puts it in the app's state)."""
    service: ModelService = request.app.state.service
    return service


ServiceDep = Annotated[ModelService, Depends(get_service)]


async def require_admin(credentials: auth.Header, service: ServiceDep) -> None:
    """SERVE_ADMIN_TOKEN as a bearer token (401 without it, 403 when none is set)."""
    await auth.bearer(service.admin)(credentials)


AdminDep = Depends(require_admin)


async def require_feedback(credentials: auth.Header, service: ServiceDep) -> None:
    """SERVE_FEEDBACK_TOKEN as a bearer token (401 without it, 403 when none is set)."""
    await auth.bearer(service.feedback_tokens)(credentials)


FeedbackDep = Depends(require_feedback)
