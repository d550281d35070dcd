"""A batch's scores counted in one pass give the exposition that observe() one by one gives."""

import math
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.api.telemetry import ONE_BY_ONE, ServiceMetrics, observe_many

BOUNDS = (0.1, 0.25, 0.5, 0.75, 0.9)


def exposition(values: list[float], batch: bool) -> dict[str, float]:
    """Each sample (bucket counts, count, sum) but the creation time."""
    text = raw(values, batch).decode()
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def same(values: list[float]) -> None:
    batch, one_by_one = exposition(values, batch=True), exposition(values, batch=False)
    assert batch.keys() == one_by_one.keys()
    for name, value in one_by_one.items():  # the sum's order of additions differs
        assert batch[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name


def raw(values: list[float], batch: bool) -> bytes:
    registry = CollectorRegistry()
    histogram = Histogram("score", "a score", ["model"], buckets=BOUNDS, registry=registry)
    child = histogram.labels("titanic")
    if batch:
        observe_many(child, values)
    else:
        for value in values:
            child.observe(value)
    return generate_latest(registry)


def test_a_batch_lands_in_the_buckets_observe_would_put_it_in() -> None:
    rng = np.random.default_rng(7)
    values = [*rng.uniform(-0.2, 1.2, 1000).tolist(), *BOUNDS, 0.0, 1.0, -math.inf, math.inf]
    assert len(values) > ONE_BY_ONE  # the one-pass branch
    same(values)


def test_bounds_nan_and_small_batches_as_observe() -> None:
    edges = [0.1, 0.1, 0.25, 0.9, 0.9000001, 5.0, 0.0, 0.5, 0.75, 0.2]
    same(edges)
    same(edges[:3])  # one by one
    # NaN: counted in no bucket, its sum NaN, as observe() does
    with_nan = [*edges, math.nan]
    same(with_nan)
    samples = exposition(with_nan, batch=True)
    assert samples["score_count[('model', 'titanic')]"] == 10
    assert math.isnan(samples["score_sum[('model', 'titanic')]"])


def samples(metrics: ServiceMetrics) -> dict[str, float]:
    text = metrics.render()[0].decode()
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created") and sample.name.startswith("serving_request")
    }


def test_the_loop_threads_observations_wait_for_a_flush_and_add_up_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """defer(): the deferring thread's observations are kept until flush() (or a scrape);
    another thread's are counted at once; the exposition is what observe() gives."""
    import threading

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    deferred, direct = ServiceMetrics("binary"), ServiceMetrics("binary")
    deferred.defer()
    labels = ("titanic", "3", "champion", "/predict", "200")
    seconds = [0.0004, 0.003, 0.003, 0.02, 7.5, 0.0011, float("nan")]
    for metrics in (deferred, direct):
        latency, requests = (metrics.child(m, labels) for m in (metrics.latency, metrics.requests))
        for value in seconds:
            metrics.observe(latency, value)
            metrics.inc(requests)
        with metrics.timed("titanic", "parse"):
            pass
    latency = deferred.child(deferred.latency, labels)
    assert latency._sum.get() == 0 and deferred._values  # kept, not yet counted
    other = threading.Thread(target=deferred.observe, args=(latency, 0.5))
    other.start()
    other.join()
    assert latency._sum.get() == 0.5  # another thread's: at once
    direct.observe(direct.child(direct.latency, labels), 0.5)
    found, expected = samples(deferred), samples(direct)  # render() flushes first
    assert not deferred._values and not deferred._counts
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        if "phase" in name and name.startswith("serving_request_phase_seconds_sum"):
            continue  # two blocks timed: their durations differ
        assert found[name] == pytest.approx(value, rel=1e-12, nan_ok=True), name


def test_several_workers_observe_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = ServiceMetrics("binary")
    metrics.defer()  # another worker's scrape reads this one's files: nothing kept back
    requests = metrics.child(metrics.requests, ("titanic", "3", "champion", "/p", "200"))
    metrics.inc(requests)
    assert not metrics._counts and requests._value.get() == 1
