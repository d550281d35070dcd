"""Alertmanager's webhooks: a firing retraining alert starts a gated retraining."""

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.api.inputs import UTF8
from services.drift.deps import DriftDep, Hook

# What an alert carries ends up in the events (pages, GET /events): valid text, bounded
Text = Annotated[str, UTF8, Field(max_length=1000)]


class Alert(BaseModel):
    """One alert of an Alertmanager webhook (the fields this service reads)."""

    status: Literal["firing", "resolved"]
    labels: dict[Text, Text]
    annotations: dict[Text, Text] = {}
    startsAt: Text = ""  # Alertmanager's names
    fingerprint: Text = ""


class Notification(BaseModel):
    """Alertmanager's webhook body (version 4)."""

    receiver: Text = ""
    status: Text = ""
    alerts: list[Alert] = Field(max_length=1000)


router = APIRouter(prefix="/alerts")


@router.post("", status_code=202, dependencies=Hook)
async def alerts(notification: Notification, drift: DriftDep) -> Response:
    """Alertmanager's webhook: a firing alert with `action=retrain` retrains its model."""
    started, refused = [], []
    for alert in notification.alerts:
        model = alert.labels.get("model", "")
        name = alert.labels.get("alertname", "?")
        if alert.status != "firing" or alert.labels.get("action") != "retrain":
            drift.event("alert", model or None, f"{name} {alert.status}: no action")
            continue
        if model not in drift.specs:
            refused.append({"alert": name, "error": f"unknown model {model!r}"})
            continue
        if canary := drift.canary.under_way(model):  # a new version would pull the rug
            drift.event("alert", model, f"{name} firing: no retraining while the canary of "
                        f"v{canary.challenger} is under way")  # fmt: skip
            continue
        if drift.settings.retrain == "off":
            drift.event("alert", model, f"{name} firing: retraining is off (DRIFT_RETRAIN)")
            continue
        drift.event("alert", model, f"{name} firing: retraining requested")
        job, new = drift.retrainer.submit(model, f"alert {name}")
        started.append({"job": job.id, "model": model, "new": new})
    status = 422 if refused and not started else 202
    body = {"retraining": started, "refused": refused}
    return Response(orjson.dumps(body), status, media_type="application/json")


@router.post("/log", dependencies=Hook)
async def alert_log(notification: Notification, drift: DriftDep) -> dict[str, int]:
    """Alertmanager's webhook for every other alert: recorded as events."""
    for alert in notification.alerts:
        name = alert.labels.get("alertname", "?")
        summary = alert.annotations.get("summary", "")
        drift.event("alert", alert.labels.get("model"), f"{name} {alert.status}: {summary}")
    return {"recorded": len(notification.alerts)}
