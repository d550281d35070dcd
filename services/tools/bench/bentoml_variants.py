"""The BentoML variants measured for titanic: stock BentoML, and services.bento as shipped."""

from dataclasses import dataclass
from pathlib import Path

from services.tools.bench.servers import BIN


@dataclass(frozen=True)
class Variant:
    name: str
    tuned: bool  # services.bento's TUNED config and services.api.bentoml_fix (SERVE_BENTOML_TUNED)


TARGET = "services.bento:ModelService"
VARIANTS = (Variant("stock BentoML", tuned=False), Variant("as shipped, tuned", tuned=True))

NOTES = [
    "BentoML p99: TimeoutMiddleware (bentoml/_internal/server/http/traffic.py) arms "
    "loop.call_later(traffic.timeout) per request and never cancels it; each timer keeps its "
    "future and the request's contextvars snapshot alive for the whole timeout (20 s here), "
    "so the worker's live objects grow by ~20 per request until gen-2 garbage collections "
    "run every 1-2 s and take 100-500 ms each (measured with gc.callbacks). "
    "services/api/bentoml_fix.py (applied by services/bento.py) cancels the timer; the app "
    "gc.freeze()s its import-time objects once the model is loaded.",
    "BentoML config alone (metrics, access log and tracing off: services/bento.py TUNED) "
    "roughly doubles its throughput but leaves the p99 at 50-170 ms; with the timer fix the "
    "p99 drops to ~10 ms at 16 connections.",
]


def command(variant: Variant, key: str, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """The bentoml serve command line and environment of one variant for model `key`."""
    env = {
        "SERVE_MODEL": key,
        "SERVE_WORKERS": "1",
        "SERVE_BENTOML_TUNED": "true" if variant.tuned else "false",
    }
    argv = [
        str(BIN / "bentoml"),
        "serve",
        TARGET,
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
    ]
    return argv, env
