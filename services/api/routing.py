"""Champion and challenger of one model, loaded by alias and routed in-process.

`split` sends a share of requests to the challenger (A/B, or a canary when the share is
small); `shadow` scores the challenger too but always answers with the champion. The mode
and share are the service's settings (SERVE_CHALLENGER_MODE, _SHARE) unless the registered
model's `experiment.mode` / `experiment.share` tags say otherwise: a canary controller moves
the share there, and every replica follows at its next poll. A unit (the caller's
X-Unit-ID: a user, a session) always lands on the same side, and without one a request id
does, so a client retrying sees one model.
"""

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Literal, cast

from contract.catalog import ModelSpec
from services.api import runtime
from services.api.runtime import LoadedModel
from services.api.settings import ServeSettings
from services.api.store import ArtifactRefused, ModelStore, RegistryUnavailable
from services.api.telemetry import ServiceMetrics

log = logging.getLogger("services.api.routing")


@dataclass(frozen=True)
class Assignment:
    """One request's models: the one whose answer is returned, and a shadow scored beside it."""

    serving: LoadedModel
    shadow: LoadedModel | None = None


def bucket(key: str) -> float:
    """A uniform number in [0, 1) fixed by the key (a unit, or a request id)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) / 2**64


Mode = Literal["off", "split", "shadow"]


@dataclass(frozen=True)
class Routing:
    """How requests are shared between champion and challenger, and who said so."""

    mode: Mode
    share: float
    source: str  # "settings", or "registry" (the experiment.* tags)


def routing_of(tags: dict[str, str], settings: ServeSettings) -> Routing:
    """The registry's experiment tags over the settings; a tag that does not parse is
    ignored (logged), never a reason to stop serving."""
    mode: str = tags.get("mode", settings.challenger_mode)
    share_text = tags.get("share", str(settings.challenger_share))
    try:
        share = float(share_text)
    except ValueError:
        share = -1.0
    if mode not in ("off", "split", "shadow") or not 0 <= share <= 1:
        log.error("experiment tags %s do not parse: the settings route", tags)
        return Routing(settings.challenger_mode, settings.challenger_share, "settings")
    source = "registry" if tags else "settings"
    return Routing(cast(Mode, mode), share, source)


class Lineup:
    """The champion and challenger this service serves now; `reload()` swaps in what the
    aliases point to."""

    def __init__(
        self, spec: ModelSpec, settings: ServeSettings, store: ModelStore, metrics: ServiceMetrics
    ) -> None:
        self.spec, self.settings, self.store, self.metrics = spec, settings, store, metrics
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.problem = "not loaded yet"  # why the service is not ready, for /readyz
        self.routing = routing_of({}, settings)
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.champion is not None

    def _load(self, alias: str) -> LoadedModel | None:
        current = self.champion if alias == "champion" else self.challenger
        artifact = self.store.fetch(self.spec.key, alias)
        if artifact is None:
            return None
        if current is not None and (current.version, current.artifact.sha256) == (
            artifact.version,
            artifact.sha256,
        ):
            return current  # unchanged: keep the warm session
        return runtime.load(self.spec, artifact)

    def reload(self) -> dict[str, str | None]:
        """Load @champion (and @challenger when routing uses it); keep the old ones on failure."""
        with self._lock:
            try:
                champion = self._load("champion")
                if champion is None:
                    raise ArtifactRefused(f"the registry has no {self.spec.key}@champion")
                routing = self._routing()
                wants_challenger = routing.mode != "off"
                challenger = self._load("challenger") if wants_challenger else None
            except Exception as exc:  # any failure: logged, counted, /readyz says it, retried
                expected = isinstance(exc, RegistryUnavailable | ArtifactRefused)
                self.problem = str(exc) if expected else f"{type(exc).__name__}: {exc}"
                state = f"still serving v{self.champion.version}" if self.champion else "NOT READY"
                log.error(
                    "%s: model not loaded: %s (%s)",
                    self.spec.key,
                    self.problem,
                    state,
                    exc_info=not expected,  # a bug or a broken artifact: its traceback
                )
                self._count("failed")
                return self.versions()
            self._swap(champion, challenger)
            self._route(routing)
            self.problem = ""
            self._count("ok")
            return self.versions()

    def _routing(self) -> Routing:
        """The experiment's routing now; the last one known while the registry is down."""
        try:
            return routing_of(self.store.experiment(self.spec.key), self.settings)
        except RegistryUnavailable:
            return self.routing

    def _route(self, routing: Routing) -> None:
        if routing != self.routing:
            log.info(
                "%s: routing %s, challenger share %.3g (from the %s)",
                self.spec.key, routing.mode, routing.share, routing.source,
            )  # fmt: skip
        self.routing = routing
        self.metrics.challenger_share.labels(self.spec.key).set(
            routing.share if routing.mode == "split" else 0.0
        )

    def _count(self, outcome: str) -> None:
        self.metrics.child(self.metrics.reloads, (self.spec.key, outcome)).inc()

    def _swap(self, champion: LoadedModel, challenger: LoadedModel | None) -> None:
        for old, new in ((self.champion, champion), (self.challenger, challenger)):
            if old is not None and (new is None or new.version != old.version):
                self.metrics.info.labels(old.name, old.version, old.alias, old.artifact.sha256).set(
                    0
                )
                # 0, not the old time: a replaced version is not an old champion
                self.metrics.registered.labels(old.name, old.version, old.alias).set(0)
            if new is not None and (old is None or new.version != old.version):
                log.info(
                    "%s: serving version %s as @%s (from the %s, sha256 %s...)",
                    new.name,
                    new.version,
                    new.alias,
                    new.artifact.source,
                    new.artifact.sha256[:12],
                )
        self.champion, self.challenger = champion, challenger
        for model in (champion, challenger):
            if model is not None:
                self.metrics.info.labels(
                    model.name, model.version, model.alias, model.artifact.sha256
                ).set(1)
                self.metrics.registered.labels(model.name, model.version, model.alias).set(
                    model.artifact.registered_at
                )
                metric, value = model.gate_metric
                self.metrics.training_metric.labels(
                    model.name, model.version, model.alias, metric
                ).set(value)

    def versions(self) -> dict[str, str | None]:
        return {
            "champion": self.champion.version if self.champion else None,
            "challenger": self.challenger.version if self.challenger else None,
        }

    def assign(self, key: str) -> Assignment:
        """Which model answers this request, and which one is scored in its shadow; `key`:
        the request's unit (X-Unit-ID), or its request id."""
        champion, challenger = self.champion, self.challenger
        if champion is None:
            raise ArtifactRefused(self.problem)
        routing = self.routing
        if challenger is None or routing.mode == "off":
            return Assignment(champion)
        if routing.mode == "shadow":
            return Assignment(champion, shadow=challenger)
        if bucket(key) < routing.share:
            return Assignment(challenger)
        return Assignment(champion)

    def by_version(self, version: str) -> LoadedModel | None:
        return next(
            (m for m in (self.champion, self.challenger) if m is not None and m.version == version),
            None,
        )
