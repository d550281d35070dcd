"""The drift service's Prometheus metrics (one process: an in-memory registry)."""

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.drift.detect import DriftResult
from services.drift.retrain import Job

RUN_OUTCOMES = ("ok", "empty_window", "failed")
RETRAIN_OUTCOMES = ("started", "promoted", "challenger", "failed")


class DriftMetrics:
    def __init__(self, models: list[str]) -> None:
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
