"""Champion and challenger of one model, loaded by alias and routed in-process.

`split` sends a share of requests to the challenger (A/B, or a canary when the share is
small); `shadow` scores the challenger too but always answers with the champion. A request
id always lands on the same side, so a client retrying sees one model.
"""

import hashlib
import logging
import threading
from dataclasses import dataclass

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


def bucket(request_id: str) -> float:
    """A uniform number in [0, 1) fixed by the request id."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest()) / 2**64


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
                wants_challenger = self.settings.challenger_mode != "off"
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
            self.problem = ""
            self._count("ok")
            return self.versions()

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

    def assign(self, request_id: str) -> Assignment:
        """Which model answers this request, and which one is scored in its shadow."""
        champion, challenger = self.champion, self.challenger
        if champion is None:
            raise ArtifactRefused(self.problem)
        mode = self.settings.challenger_mode
        if challenger is None or mode == "off":
            return Assignment(champion)
        if mode == "shadow":
            return Assignment(champion, shadow=challenger)
        if bucket(request_id) < self.settings.challenger_share:
            return Assignment(challenger)
        return Assignment(champion)

    def by_version(self, version: str) -> LoadedModel | None:
        return next(
            (m for m in (self.champion, self.challenger) if m is not None and m.version == version),
            None,
        )
