"""The drift service's Prometheus metrics (one process: an in-memory registry)."""

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contract.catalog import ModelSpec
from services.drift.canary import Canary
from services.drift.detect import DriftResult
from services.drift.performance import Performance
from services.drift.retrain import Job

RUN_OUTCOMES = ("ok", "empty_window", "failed")
# canary: passed the gate, ramped in as a canary (the catalog entry's production.rollout)
RETRAIN_OUTCOMES = ("started", "promoted", "canary", "challenger", "failed")


class DriftMetrics:
    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        models = list(specs)
        self.registry = CollectorRegistry()
        reg: Any = {"registry": self.registry}
        self.share = Gauge(
            "drift_share_drifted_features",
            "Share of the input features whose drift score reached the threshold",
            ["model"],
            **reg,
        )
        self.dataset = Gauge(
            "drift_dataset_drifted",
            "1 when the share reached the data-set drift share",
            ["model"],
            **reg,
        )
        self.feature_score = Gauge(
            "drift_feature_score",
            "Drift score (a distance: higher is more drift) per input feature",
            ["model", "feature", "method"],
            **reg,
        )
        self.feature_drifted = Gauge(
            "drift_feature_drifted", "1 when the feature's score reached the threshold",
            ["model", "feature"], **reg,
        )  # fmt: skip
        self.prediction_score = Gauge(
            "drift_prediction_score",
            "Drift score of the model's output (P(positive), P(top class) or the value)",
            ["model", "method"],
            **reg,
        )
        self.prediction_drifted = Gauge(
            "drift_prediction_drifted", "1 when the output or the predicted labels drifted",
            ["model"], **reg,
        )  # fmt: skip
        self.rows = Gauge("drift_window_rows", "Predictions in the last window", ["model"], **reg)
        self.last_run = Gauge(
            "drift_last_run_timestamp_seconds",
            "When the last check completed (a verdict, or too few rows for one)",
            ["model"],
            **reg,
        )
        self.duration = Histogram(
            "drift_run_duration_seconds", "Time of one drift run", ["model"],
            buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), **reg,
        )  # fmt: skip
        self.runs = Counter("drift_runs", "Drift runs by outcome", ["model", "outcome"], **reg)
        self.retraining = Counter(
            "retraining_runs", "Retraining jobs by outcome", ["model", "outcome"], **reg
        )
        self.retraining_active = Gauge(
            "retraining_in_progress", "1 while a retraining job of the model runs", ["model"], **reg
        )
        self.retraining_last = Gauge(
            "retraining_last_run_timestamp_seconds", "When the last retraining job ended",
            ["model"], **reg,
        )  # fmt: skip
        for model in models:  # every series exists from the start: increase() sees the first
            for outcome in RUN_OUTCOMES:
                self.runs.labels(model, outcome)
            for outcome in RETRAIN_OUTCOMES:
                self.retraining.labels(model, outcome)
            self.retraining_active.labels(model).set(0)
            self.duration.labels(model)  # a first run is a rate, not a series appearing
        self.performance = PerformanceGauges(self.registry, specs)
        self.canary = CanaryGauges(self.registry, models)

    def observe(self, result: DriftResult) -> None:
        model = result.model
        self.share.labels(model).set(result.share_drifted)
        self.dataset.labels(model).set(int(result.dataset_drifted))
        for name, found in result.features.items():
            self.feature_score.labels(model, name, found["method"]).set(found["score"])
            self.feature_drifted.labels(model, name).set(int(found["drifted"]))
        if "prediction" in result.prediction:
            found = result.prediction["prediction"]
            self.prediction_score.labels(model, found["method"]).set(found["score"])
        drifted = any(p["drifted"] for p in result.prediction.values())
        self.prediction_drifted.labels(model).set(int(drifted))
        self.rows.labels(model).set(result.rows)
        self.last_run.labels(model).set(result.ran_at)
        self.duration.labels(model).observe(result.seconds)
        self.runs.labels(model, "ok").inc()

    def empty(self, model: str, rows: int, at: float) -> None:
        self.rows.labels(model).set(rows)
        self.last_run.labels(model).set(at)
        self.runs.labels(model, "empty_window").inc()

    def job(self, job: Job) -> None:
        active = job.state in ("queued", "running")
        self.retraining_active.labels(job.model).set(int(job.state == "running"))
        if job.state == "queued":
            self.retraining.labels(job.model, "started").inc()
        elif not active:
            self.retraining.labels(job.model, job.state).inc()
            self.retraining_last.labels(job.model).set(job.finished_at or 0)


class PerformanceGauges:
    """Performance on labelled traffic (services.drift.performance), by version and alias:
    a version that no longer serves labelled records loses its series."""

    def __init__(self, registry: CollectorRegistry, specs: dict[str, ModelSpec]) -> None:
        reg: Any = {"registry": registry}
        version = ["model", "version", "alias"]
        self.value = Gauge(
            "model_performance", "The task's metric over the labelled records of the window",
            [*version, "metric"], **reg,
        )  # fmt: skip
        self.registered = Gauge(
            "model_performance_registered",
            "The version's held-out value of a floor metric, as registered at training",
            [*version, "metric"], **reg,
        )  # fmt: skip
        self.floor = Gauge(
            "model_performance_floor", "The catalog's floor of a metric (bound: min or max)",
            ["model", "metric", "bound"], **reg,
        )  # fmt: skip
        self.records = Gauge(
            "model_performance_records", "Labelled records in the window", version, **reg
        )
        self.coverage = Gauge(
            "model_label_coverage", "Labelled records over records served in the window",
            version, **reg,
        )  # fmt: skip
        self.delay = Gauge(
            "model_label_delay_seconds", "Median time from a prediction to its outcome",
            version, **reg,
        )  # fmt: skip
        self.last_run = Gauge(
            "model_performance_last_run_timestamp_seconds",
            "When performance was last computed", ["model"], **reg,
        )  # fmt: skip
        self._series: dict[str, list[tuple[Gauge, tuple[str, ...]]]] = {}
        for key, spec in specs.items():
            for metric, bound in spec.floors.items():
                for side, value in (("min", bound.min), ("max", bound.max)):
                    if value is not None:
                        self.floor.labels(key, metric, side).set(value)

    def observe(self, model: str, results: list[Performance], at: float) -> None:
        """The model's results replace its previous ones."""
        for gauge, labels in self._series.pop(model, []):
            gauge.remove(*labels)
        series: list[tuple[Gauge, tuple[str, ...]]] = []
        for result in results:
            version = (model, result.version, result.alias)
            for gauge, value in (
                (self.records, result.records),
                (self.coverage, result.coverage),
                (self.delay, result.delay_s),
            ):
                gauge.labels(*version).set(value)
                series.append((gauge, version))
            for gauge, values in (
                (self.value, result.metrics),
                (self.registered, result.registered),
            ):
                for metric, value in values.items():
                    gauge.labels(*version, metric).set(value)
                    series.append((gauge, (*version, metric)))
        self._series[model] = series
        self.last_run.labels(model).set(at)


DECISIONS = ("started", "advanced", "held", "promoted", "rolled_back")


class CanaryGauges:
    """Canary rollouts (services.drift.canary): the share now, decisions, the last look's
    outcome comparison."""

    def __init__(self, registry: CollectorRegistry, models: list[str]) -> None:
        reg: Any = {"registry": registry}
        self.share = Gauge(
            "canary_share", "The challenger's share of units in a canary (0: none)", ["model"],
            **reg,
        )  # fmt: skip
        self.decisions = Counter(
            "canary_decisions", "Canary decisions: started, advanced, held, promoted, rolled_back",
            ["model", "decision"], **reg,
        )  # fmt: skip
        self.arm = Gauge(
            "experiment_arm_metric",
            "An arm's decision metric on labelled traffic, with its 95% interval (stat)",
            ["model", "version", "alias", "metric", "stat"], **reg,
        )  # fmt: skip
        self.difference = Gauge(
            "experiment_difference",
            "Challenger minus champion on the decision metric, with this look's interval",
            ["model", "metric", "stat"], **reg,
        )  # fmt: skip
        for model in models:
            self.share.labels(model).set(0)
            for decision in DECISIONS:
                self.decisions.labels(model, decision)

    def observe(self, canary: Canary, decision: str) -> None:
        self.share.labels(canary.model).set(canary.share)
        self.decisions.labels(canary.model, decision).inc()
        found = canary.looks[-1]["checks"]["outcomes"].get("comparison") if canary.looks else None
        if found is None:
            return
        model, metric = canary.model, found["metric"]
        for alias in ("champion", "challenger"):
            arm = found[alias]
            for stat in ("value", "low", "high"):
                self.arm.labels(model, arm["version"], alias, metric, stat).set(arm[stat])
        for stat, key in (("value", "difference"), ("low", "low"), ("high", "high")):
            self.difference.labels(model, metric, stat).set(found[key])
