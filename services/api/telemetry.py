"""Prometheus metrics of a model service, correct with several worker processes.

With `PROMETHEUS_MULTIPROC_DIR` set (the CLI sets it before starting workers) every worker
writes its samples to that folder and `/metrics` adds them up; without it, one process keeps
them in memory. Series are labelled by model, version and alias so a dashboard can tell the
champion from the challenger.
"""

import os
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

from contract.catalog import LATENCY_BUCKETS_S, ModelSpec
from contract.tasks import get_task

LATENCY_BUCKETS = LATENCY_BUCKETS_S  # a model's latency objective is one of them
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
# Regression values span orders of magnitude (prices): 1-2-5 steps from 0.001 to 10 million
VALUE_BUCKETS = tuple(m * 10.0**e for e in range(-3, 8) for m in (1, 2, 5))


ONE_BY_ONE = 8  # observations a batch takes one at a time; more are counted in one pass


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for each value (a child: labels given). A 1000-record batch
    took 1000 observe() calls, ~4 ms: past ONE_BY_ONE values the buckets are counted with
    numpy and each bucket and the sum incremented once, which prometheus_client has no call
    for, hence its bucket bounds and values (tests/unit/test_metrics_batch.py checks the
    exposition equals observe()'s, so an upgrade that moves them fails there, not in
    production). A value equal to a bound falls in that bucket, NaN in none, as observe()."""
    if len(values) <= ONE_BY_ONE or not hasattr(histogram, "_buckets"):
        for value in values:
            histogram.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    bounds = histogram._upper_bounds  # sorted, +Inf last
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(array.sum()))
    for bucket, count in zip(histogram._buckets, counts[: len(bounds)].tolist(), strict=True):
        if count:
            bucket.inc(count)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Timed:
    """A histogram observation of a block's duration: a plain context manager, since
    @contextmanager's generator costs more than the observation on the request path."""

    __slots__ = ("histogram", "metrics", "start")

    def __init__(self, metrics: "ServiceMetrics", histogram: Any) -> None:
        self.metrics, self.histogram, self.start = metrics, histogram, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self.metrics.observe(self.histogram, time.perf_counter() - self.start)


class ServiceMetrics:
    """Every instrument of one service; `render()` is the body of GET /metrics."""

    def __init__(self, task: str) -> None:
        """`task`: the catalog's task kind, whose score the prediction histogram buckets."""
        # In multiprocess mode samples go to files and a fresh registry collects them
        self.registry = None if multiprocess() else CollectorRegistry()
        self._children: dict[tuple[Any, ...], Any] = {}
        # The event loop's observations, until flush(): see defer()
        self._owner: int | None = None
        self._values: dict[Any, list[float]] = {}  # histogram child: values
        self._counts: dict[Any, float] = {}  # counter child: amount
        reg: Any = {"registry": self.registry}
        self.requests = Counter(
            "serving_requests",
            "Requests answered, by status code",
            ["model", "version", "alias", "route", "code"],
            **reg,
        )
        self.latency = Histogram(
            "serving_request_duration_seconds",
            "Time from request to response",
            ["model", "version", "alias", "route", "code"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.batch = Histogram(
            "serving_batch_size",
            "Records per request",
            ["model", "route"],
            buckets=BATCH_BUCKETS,
            **reg,
        )
        self.scores = Histogram(
            "serving_prediction_score",
            "P(positive) for binary, P(top class) for multiclass, the value for regression, "
            "the anomaly score for anomaly detectors, the distance to the segment's centre, "
            "the top recommendation's predicted rating, the mean of a forecast, the best "
            "search result's cosine similarity",
            ["model", "version", "alias"],
            buckets=VALUE_BUCKETS if get_task(task).SCORE_VALUES else PROBABILITY_BUCKETS,
            **reg,
        )
        self.labels = Counter(
            "serving_predicted_labels",
            "Predicted labels",
            ["model", "version", "alias", "label"],
            **reg,
        )
        self.record_errors = Counter(
            "serving_invalid_records",
            "Records refused by validation, by field",
            ["model", "field"],
            **reg,
        )
        self.shadow = Counter(
            "serving_shadow_predictions",
            "Challenger predictions scored in shadow mode",
            ["model", "version", "agreement"],
            **reg,
        )
        self.objective = Gauge(
            "serving_latency_objective_seconds",
            "The model's latency objective (its catalog slo.p99_ms): 99% of requests within "
            "it; `le` names the request duration histogram's bucket at it",
            ["model", "le"],
            multiprocess_mode="livemax",
            **reg,
        )
        self.info = Gauge(
            "serving_model_info",
            "1 for each loaded model version (0 once replaced)",
            ["model", "version", "alias", "sha256"],
            multiprocess_mode="livemax",
            **reg,
        )
        self.training_metric = Gauge(
            "serving_model_training_metric",
            "The gate metric of the loaded version, held out",
            ["model", "version", "alias", "metric"],
            multiprocess_mode="livemax",
            **reg,
        )
        self.registered = Gauge(
            "serving_model_registered_timestamp_seconds",
            "When the loaded version was registered (unix time): a model's age",
            ["model", "version", "alias"],
            multiprocess_mode="livemax",
            **reg,
        )
        self.reloads = Counter(
            "serving_model_reloads",
            "Registry polls and POST /admin/reload: ok, or failed (the loaded versions stay)",
            ["model", "outcome"],
            **reg,
        )
        self.log_rows = Counter(
            "serving_prediction_log_rows",
            "Predictions stored in the prediction log",
            ["model"],
            **reg,
        )
        self.log_errors = Counter(
            "serving_prediction_log_errors",
            "Prediction-log commits that failed (their requests were answered 503)",
            ["model"],
            **reg,
        )
        self.challenger_share = Gauge(
            "serving_challenger_share",
            "Share of requests (or units) the challenger answers now (split mode; 0 otherwise)",
            ["model"],
            multiprocess_mode="livemax",
            **reg,
        )
        self.feedback = Counter(
            "serving_feedback_records",
            "True outcomes sent back (POST /feedback): stored, duplicate, or refused",
            ["model", "status"],
            **reg,
        )
        self.log_flush = Histogram(
            "serving_prediction_log_flush_seconds",
            "Time to commit one group of predictions to the log",
            ["model"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.feature_lookups = Counter(
            "serving_feature_lookups",
            "Entity-keyed records, by online-store outcome (found, missing, stale)",
            ["model", "feature_service", "outcome"],
            **reg,
        )
        self.feature_latency = Histogram(
            "serving_feature_fetch_seconds",
            "Time to read one request's entities from the online store",
            ["model", "feature_service"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.phase = Histogram(
            "serving_request_phase_seconds",
            "Time a /predict request spends in each phase: parse (body to records), inference "
            "(tensors, the graph, the answers), log (waiting for its prediction-log commit)",
            ["model", "phase"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.loop_lag = Histogram(
            "serving_event_loop_lag_seconds",
            "How late a probe scheduled on the event loop every 100 ms ran: the time any "
            "request waited behind other work (queueing) in the process",
            ["model"],
            buckets=LATENCY_BUCKETS,
            **reg,
        )
        self.shed = Counter(
            "serving_shed_requests",
            "Requests refused unworked because the service is over capacity, by reason (queue: "
            "waited past SERVE_QUEUE_TIMEOUT_S; inflight: past SERVE_MAX_CONCURRENCY; inference: "
            "waited past SERVE_QUEUE_TIMEOUT_S in the inference line)",
            ["model", "reason"],
            **reg,
        )
        self.inflight = Gauge(
            "serving_inflight_requests",
            "Requests being processed",
            ["model"],
            multiprocess_mode="livesum",
            **reg,
        )

    def defer(self) -> None:
        """From here on, what the calling thread (the event loop's) observes through
        observe() and inc() is kept in plain lists and folded into the instruments by
        flush(): the app flushes every 100 ms (the loop-lag probe) and before each scrape.
        A request's six observations and two counts took ~6 us of prometheus_client's
        locked increments, ~6% of a small model's request. Other threads (batches,
        shadow scoring) observe at once, and so do several workers, whose files any
        worker's scrape reads."""
        if self.registry is not None:
            self._owner = threading.get_ident()

    def observe(self, histogram: Any, value: float) -> None:
        """histogram.observe(value) (a child: labels given), or at the next flush()."""
        if threading.get_ident() != self._owner:
            histogram.observe(value)
        elif (values := self._values.get(histogram)) is None:
            self._values[histogram] = [value]
        else:
            values.append(value)

    def observe_all(self, histogram: Any, values: Sequence[float]) -> None:
        """observe() of each value: a batch's scores in one pass (observe_many)."""
        if threading.get_ident() != self._owner:
            observe_many(histogram, values)
        else:
            self._values.setdefault(histogram, []).extend(values)

    def set_objective(self, spec: ModelSpec) -> None:
        """The model's latency objective, labelled with its bucket as the histogram writes it
        (the recording rules join the two on `le`)."""
        seconds = spec.slo.p99_ms / 1000
        bucket = floatToGoString(seconds)  # type: ignore[no-untyped-call]
        self.objective.labels(spec.key, bucket).set(seconds)

    def inc(self, counter: Any, amount: float = 1.0) -> None:
        """counter.inc(amount) (a child), or at the next flush()."""
        if threading.get_ident() != self._owner:
            counter.inc(amount)
        else:
            self._counts[counter] = self._counts.get(counter, 0.0) + amount

    def flush(self) -> None:
        """Fold the deferred observations into the instruments (from the deferring thread:
        another one's call does nothing)."""
        if threading.get_ident() != self._owner or not (self._values or self._counts):
            return
        values, counts = self._values, self._counts
        self._values, self._counts = {}, {}
        for histogram, observed in values.items():
            observe_many(histogram, observed)
        for counter, amount in counts.items():
            counter.inc(amount)

    def observe_predictions(
        self, model: str, version: str, alias: str, scores: list[float], labels: list[str]
    ) -> None:
        self.observe_all(self.child(self.scores, (model, version, alias)), scores)
        if len(labels) == 1:  # one record: a Counter of one label costs more than the count
            self.inc(self.child(self.labels, (model, version, alias, labels[0])))
            return
        # One labels() lookup per distinct label, not per record (a 1000-record batch)
        for label, count in Tally(labels).items():
            self.inc(self.child(self.labels, (model, version, alias, label)), count)

    def timed(self, model: str, phase: str) -> "Timed":
        """Observe the block's duration as `phase` of a request (serving_request_phase_seconds)."""
        return Timed(self, self.child(self.phase, (model, phase)))

    def live_gauge(self, gauge: Any, read: Callable[[], float]) -> bool:
        """Let `gauge` read its value from `read` at each scrape (False: nothing to count per
        request); True in multiprocess mode, where the workers' files hold the value and
        the caller keeps counting with inc() and dec()."""
        if multiprocess():
            return True
        gauge.set_function(read)
        return False

    def child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """metric.labels(*labels), remembered (labels() takes a lock and builds a key)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> tuple[bytes, str]:
        self.flush()
        if self.registry is not None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
