"""The one BentoML service definition, for every catalog model.

    SERVE_MODEL=titanic bentoml serve services.bento:ModelService --port 8101

It mounts the same ASGI app as `python -m services.serve` (services.app: records contract,
OIP v2, metrics), so a bento, its container and the lean uvicorn process answer alike.
BentoML keeps its own /livez, /readyz and /metrics; readiness asks the loaded models.
services.bentoml_fix removes BentoML's own p99 stalls (SERVE_BENTOML_TIMER_FIX=0: stock).
"""

import bentoml

from services.settings import ServeSettings

with bentoml.importing():
    from services.app import create_app

settings = ServeSettings()
if settings.bentoml_timer_fix:
    from services import bentoml_fix

    bentoml_fix.apply()
app = create_app(settings.model, settings)


@bentoml.service(
    name=settings.model.replace("_", "-") or "model",
    workers=settings.workers,
    traffic={"timeout": settings.timeout_s * 2, "max_concurrency": settings.max_concurrency},
)
@bentoml.asgi_app(app, path="/")
class ModelService:
    def __is_ready__(self) -> bool:
        """BentoML's /readyz: 503 until the champion is loaded and checked."""
        return bool(app.state.service.models.ready)
