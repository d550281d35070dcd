"""The one BentoML service definition, for every catalog model.

    SERVE_MODEL=titanic bentoml serve services.bento:ModelService --port 8101

It mounts the same ASGI app as `python -m services.serve` (services.api.app: records contract,
OIP v2, metrics), so a bento, its container and the lean uvicorn process answer alike.
BentoML keeps its own /livez, /readyz and /metrics; readiness asks the loaded models.
Tuned for the hot path (see TUNED and services.api.bentoml_fix); SERVE_BENTOML_TUNED=false: stock.
"""

from typing import Any

import bentoml

from services.api.settings import ServeSettings

with bentoml.importing():
    from services.api.app import create_app

settings = ServeSettings()
# What `make bench` found BentoML spends on each request that the app already does itself:
# its own metrics (the app's /metrics has the contract's), an access log line (the app logs
# each request) and an OpenTelemetry span; and its timeout timers' p99 stalls (bentoml_fix)
TUNED: dict[str, Any] = {
    "metrics": {"enabled": False},
    "logging": {"access": {"enabled": False}},
    "tracing": {"sample_rate": 0.0, "excluded_urls": ["/predict", "/v2"]},
}
if settings.bentoml_tuned:
    from services.api import bentoml_fix

    bentoml_fix.apply()
app = create_app(settings.model, settings)


@bentoml.service(
    name=settings.model.replace("_", "-") or "model",
    workers=settings.workers,
    traffic={"timeout": settings.timeout_s * 2, "max_concurrency": settings.max_concurrency},
    **(TUNED if settings.bentoml_tuned else {}),
)
@bentoml.asgi_app(app, path="/")
class ModelService:
    def __is_ready__(self) -> bool:
        """BentoML's /readyz: 503 until the champion is loaded and checked."""
        return bool(app.state.service.lineup.ready)
