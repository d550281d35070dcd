"""Canary rollouts decided by outcomes: the challenger's share ramps in steps, and it is
promoted or rolled back by its errors, its latency and its outcome metric.

The share lives in the registry, as the registered model's `experiment.mode` and
`experiment.share` tags, which every replica of the model service follows at its next poll
(services.api.routing): the controller never talks to a service. At the end of each step
(DRIFT_CANARY_STEP_S) it checks, per alias over the step:
  - errors: the challenger's 5xx ratio over the champion's by more than
    DRIFT_CANARY_MAX_ERROR_INCREASE (Prometheus, serving_requests_total);
  - latency: the challenger's p99 over DRIFT_CANARY_LATENCY_P99_S and over 1.5x the
    champion's (serving_request_duration_seconds);
  - outcomes: the group-sequential comparison on labelled traffic (services.drift.experiment).
Any of them worse: rolled back (the challenger alias removed, routing off). All fine: the
next step, and after the last one the challenger is promoted (champion alias moved). What
cannot be judged (Prometheus unreachable, too few outcomes at the last step) holds the step
for another DRIFT_CANARY_STEP_S; a canary older than DRIFT_CANARY_TIMEOUT_S is rolled back.
Every decision is an event, a version tag in the registry and a `canary_decisions_total`
count (the CanaryRolledBack alert).
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from contract.catalog import ModelSpec
from services.api import feedback
from services.api.store import EXPERIMENT_TAG_PREFIX
from services.drift import experiment
from services.drift.settings import DriftSettings

log = logging.getLogger("services.drift.canary")
ACTIVE = ("ramping", "waiting")
LOOKS = 50  # the looks a canary keeps (a held one looks again every step)


class CanaryRefused(ValueError):
    """A canary cannot start (no challenger, or one is under way)."""


@dataclass
class Canary:
    model: str
    champion: str  # versions
    challenger: str
    steps: list[float]
    step: int = 0
    state: str = "ramping"  # ramping, waiting (for outcomes), promoted, rolled_back
    started_at: float = field(default_factory=time.time)
    step_started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    reason: str = ""
    looks: list[dict[str, Any]] = field(default_factory=list)  # each step's checks

    @property
    def share(self) -> float:
        return self.steps[self.step] if self.state in ACTIVE else 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"share": self.share}


Report = Callable[[Canary, str, str], None]  # (canary, decision, text)


class Controller:
    """The canaries of the watched models, persisted in the state folder."""

    def __init__(
        self, settings: DriftSettings, tracking_uri: str, specs: dict[str, ModelSpec],
        report: Report,
    ) -> None:  # fmt: skip
        self.settings, self.tracking_uri, self.specs, self.report = (
            settings, tracking_uri, specs, report,
        )  # fmt: skip
        self.folder = settings.state_dir / "canary"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.canaries = {
            path.stem: Canary(**json.loads(path.read_text()))
            for path in sorted(self.folder.glob("*.json"))
        }

    def client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _save(self, canary: Canary) -> None:
        (self.folder / f"{canary.model}.json").write_text(json.dumps(asdict(canary)))

    def _route(self, model: str, mode: str, share: float) -> None:
        client = self.client()
        client.set_registered_model_tag(model, f"{EXPERIMENT_TAG_PREFIX}mode", mode)
        client.set_registered_model_tag(model, f"{EXPERIMENT_TAG_PREFIX}share", f"{share:g}")

    def under_way(self, model: str) -> Canary | None:
        """The model's canary that has not been decided yet, if any."""
        canary = self.canaries.get(model)
        return canary if canary is not None and canary.state in ACTIVE else None

    def start(self, model: str) -> Canary:
        """Ramp @challenger in from the first step; CanaryRefused when it cannot."""
        current = self.canaries.get(model)
        if current is not None and current.state in ACTIVE:
            raise CanaryRefused(f"a canary of {model} v{current.challenger} is under way")
        client = self.client()
        try:
            champion = client.get_model_version_by_alias(model, "champion").version
            challenger = client.get_model_version_by_alias(model, "challenger").version
        except Exception as exc:  # MLflow's not-found and connection errors alike
            raise CanaryRefused(f"{model} needs a @champion and a @challenger: {exc}") from exc
        if champion == challenger:
            raise CanaryRefused(f"{model}: @challenger is the champion (v{champion})")
        canary = Canary(model, str(champion), str(challenger), list(self.settings.canary_steps))
        self._route(model, "split", canary.share)
        self.canaries[model] = canary
        self._save(canary)
        self.report(canary, "started", f"v{challenger} at {canary.share:.0%} of units")
        return canary

    def stop(self, model: str, reason: str) -> Canary:
        """An operator's rollback of the canary under way."""
        canary = self.canaries.get(model)
        if canary is None or canary.state not in ACTIVE:
            raise CanaryRefused(f"no canary of {model} under way")
        self._roll_back(canary, reason)
        return canary

    def tick(self, now: float | None = None) -> None:
        """Judge every canary whose step is over (the drift service's loop calls it)."""
        now = time.time() if now is None else now
        for canary in list(self.canaries.values()):
            if (
                canary.state in ACTIVE
                and now - canary.step_started_at >= self.settings.canary_step_s
            ):
                try:
                    self.judge(canary, now)
                except Exception as exc:  # the registry or the log down: held, said
                    log.warning("%s: canary not judged: %r", canary.model, exc)

    def judge(self, canary: Canary, now: float) -> None:
        """The end of a step: roll back, hold, advance or promote."""
        look = self.look(canary, now)
        canary.looks = [*canary.looks, look][-LOOKS:]
        worse = [name for name, check in look["checks"].items() if check["verdict"] == "worse"]
        unknown = [name for name, c in look["checks"].items() if c["verdict"] == "unknown"]
        if worse:
            self._roll_back(canary, "; ".join(look["checks"][n]["text"] for n in worse))
        elif now - canary.started_at > self.settings.canary_timeout_s:
            self._roll_back(canary, f"no decision in {self.settings.canary_timeout_s:g} s")
        elif unknown:  # the step is held: judged again a whole step later
            canary.state, canary.step_started_at = "waiting", now
            self._save(canary)
            self.report(canary, "held", "; ".join(look["checks"][n]["text"] for n in unknown))
        elif canary.step + 1 < len(canary.steps):
            canary.step, canary.state, canary.step_started_at = canary.step + 1, "ramping", now
            self._route(canary.model, "split", canary.share)
            self._save(canary)
            self.report(canary, "advanced", f"v{canary.challenger} at {canary.share:.0%} of units")
        else:
            self._promote(canary)

    def look(self, canary: Canary, now: float) -> dict[str, Any]:
        """This step's checks: errors, latency, outcomes (each: verdict, text, numbers)."""
        window = max(60, round(now - canary.step_started_at))
        checks = {
            "errors": self._errors(canary.model, window),
            "latency": self._latency(canary.model, window),
            "outcomes": self._outcomes(canary),
        }
        return {"at": now, "step": canary.step, "share": canary.share, "checks": checks}

    def _query(self, expr: str) -> dict[str, float] | None:
        """An instant PromQL query's values by alias; None when Prometheus cannot say."""
        try:
            answer = httpx.get(
                f"{self.settings.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
            )
            result = answer.json()["data"]["result"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("canary: Prometheus query failed: %r", exc)
            return None
        return {r["metric"].get("alias", ""): float(r["value"][1]) for r in result}

    def _errors(self, model: str, window: int) -> dict[str, Any]:
        def requests(extra: str = "") -> str:
            counter = f"serving_requests_total{{model='{model}'{extra}}}"
            return f"sum by (alias) (increase({counter}[{window}s]))"

        # no 5xx at all is no series at all: zero, not a missing ratio
        errors, answered = requests(", code=~'5..'"), requests()
        ratio = self._query(f"({errors} or {answered} * 0) / {answered}")
        if ratio is None or "challenger" not in ratio:
            return {"verdict": "unknown", "text": "no error ratio of the challenger yet"}
        ours, theirs = ratio["challenger"], ratio.get("champion", 0.0)
        worse = ours > theirs + self.settings.canary_max_error_increase
        text = f"5xx ratio {ours:.2%} against the champion's {theirs:.2%}"
        return {"verdict": "worse" if worse else "fine", "text": text, "values": ratio}

    def _latency(self, model: str, window: int) -> dict[str, Any]:
        p99 = self._query(
            f"histogram_quantile(0.99, sum by (alias, le) (increase("
            f'serving_request_duration_seconds_bucket{{model="{model}"}}[{window}s])))'
        )
        if p99 is None or p99.get("challenger") is None or p99["challenger"] != p99["challenger"]:
            return {"verdict": "unknown", "text": "no latency of the challenger yet"}
        ours, theirs = p99["challenger"], p99.get("champion", float("nan"))
        slo = self.settings.canary_latency_p99_s
        worse = ours > slo and not ours <= 1.5 * theirs  # NaN champion: the SLO alone
        text = f"p99 {ours * 1000:.1f} ms (SLO {slo * 1000:g} ms, champion {theirs * 1000:.1f} ms)"
        return {"verdict": "worse" if worse else "fine", "text": text, "values": p99}

    def _outcomes(self, canary: Canary) -> dict[str, Any]:
        spec = self.specs[canary.model]
        if spec.task_kind.outcome(spec) is None:  # no ground truth comes back: not a check
            return {"verdict": "fine", "text": "the task has no outcomes"}
        arms = self.arms(canary.model, canary.started_at, [canary.champion, canary.challenger])
        planned = self.settings.canary_records
        last = canary.step + 1 == len(canary.steps)
        fraction = 1.0 if last else min(1.0, min(map(len, arms.values())) / planned)
        previous = max(
            (look["checks"]["outcomes"].get("fraction", 0.0) for look in canary.looks), default=0.0
        )
        found = experiment.compare(
            spec, arms[canary.champion], arms[canary.challenger], fraction,
            self.settings.canary_min_records, previous=previous,
        )  # fmt: skip
        text = (
            f"{found.metric}: v{canary.challenger} {found.challenger.value:.4g} against "
            f"v{canary.champion} {found.champion.value:.4g} over {found.challenger.records} / "
            f"{found.champion.records} labelled, difference in [{found.low:.3g}, {found.high:.3g}]"
            f" at {found.level:.4%}"
        )
        verdict = {"worse": "worse", "better": "fine", "inconclusive": "fine"}.get(found.verdict)
        if verdict is None:  # too few outcomes: fine on the way, not enough to promote on
            verdict = "unknown" if last else "fine"
        return {"verdict": verdict, "text": text, "comparison": found.as_dict(),
                "fraction": fraction}  # fmt: skip

    def arms(self, model: str, since: float, versions: list[str]) -> dict[str, list[Any]]:
        """The labelled records of each version predicted since `since` (one read)."""
        labelled, _ = feedback.read_labelled(
            self.settings.prediction_log, model, since, self.settings.performance_max_records,
            self.settings.log_timeout_s,
        )  # fmt: skip
        return {v: [r for r in labelled if r.version == v] for v in versions}

    def _roll_back(self, canary: Canary, reason: str) -> None:
        client = self.client()
        client.delete_registered_model_alias(canary.model, "challenger")
        self._route(canary.model, "off", 0.0)
        client.set_model_version_tag(
            canary.model, canary.challenger, "canary", f"rolled back: {reason}"
        )
        self._finish(canary, "rolled_back", reason)

    def _promote(self, canary: Canary) -> None:
        client = self.client()
        client.set_registered_model_alias(canary.model, "champion", canary.challenger)
        client.delete_registered_model_alias(canary.model, "challenger")
        self._route(canary.model, "off", 0.0)
        client.set_model_version_tag(canary.model, canary.challenger, "canary", "promoted")
        self._finish(canary, "promoted", f"v{canary.challenger} replaces v{canary.champion}")

    def _finish(self, canary: Canary, state: str, reason: str) -> None:
        canary.state, canary.reason, canary.finished_at = state, reason, time.time()
        self._save(canary)
        self.report(canary, state, reason)
