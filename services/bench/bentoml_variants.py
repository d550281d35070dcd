"""The BentoML variants measured for titanic: as shipped, tuned by config, and fixed."""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.bench.servers import BIN

# Everything BentoML lets a config file switch off on the request path (BENTOML_CONFIG)
# No `version` key: `bentoml serve` reads the file twice, with the v1 and the v2 schema, and
# only an unversioned file passes both (the v2 keys sit under `services:`)
LEAN_CONFIG: dict[str, Any] = {
    "services": {
        "metrics": {"enabled": False},  # its own per-request instruments (ours stay on)
        "logging": {"access": {"enabled": False}},  # one log line per request
        # sample_rate is already 0, but the OpenTelemetry middleware still builds a span
        "tracing": {"sample_rate": 0.0, "excluded_urls": ["/predict"]},
    },
}


@dataclass(frozen=True)
class Variant:
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    timer_fix: bool = False  # services.bentoml_fix (SERVE_BENTOML_TIMER_FIX)


TARGET = "services.bento:ModelService"
VARIANTS = (
    Variant("stock BentoML"),
    Variant("config: no metrics/access log/tracing", LEAN_CONFIG),
    Variant("config + timer fix (as shipped)", LEAN_CONFIG, timer_fix=True),
)

NOTES = [
    "BentoML p99: TimeoutMiddleware (bentoml/_internal/server/http/traffic.py) arms "
    "loop.call_later(traffic.timeout) per request and never cancels it; each timer keeps its "
    "future and the request's contextvars snapshot alive for the whole timeout (20 s here), "
    "so the worker's live objects grow by ~20 per request until gen-2 garbage collections "
    "run every 1-2 s and take 100-500 ms each (measured with gc.callbacks). "
    "services/bentoml_fix.py (applied by services/bento.py) cancels the timer; the app "
    "gc.freeze()s its import-time objects once the model is loaded.",
]


def command(variant: Variant, key: str, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """The bentoml serve command line and environment of one variant for model `key`."""
    env = {
        "SERVE_MODEL": key,
        "SERVE_WORKERS": "1",
        "SERVE_BENTOML_TIMER_FIX": "true" if variant.timer_fix else "false",
    }
    if variant.config:
        slug = re.sub(r"\W+", "-", variant.name)
        path = scratch / f"bentoml-{slug}.yaml"
        path.write_text(json.dumps(variant.config))  # JSON is YAML
        env["BENTOML_CONFIG"] = str(path)
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
