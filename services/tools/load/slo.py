"""The load test's service-level objectives, judged on measured values (no Locust import:
Locust monkey-patches the process it is imported in).

A request kind's percentile is judged only where at least five of its requests lie beyond
it: a p95 needs 100 samples, a p99 500. Below that the "percentile" is one of the few slowest
requests, and one stall of a shared machine (every service slow for a second at once) decides
it. The total, which holds every request, is judged whatever its size, and every failure
counts from the first.
"""

from typing import Any

TAIL = 5  # requests beyond a percentile before it is judged
MIN_SAMPLES = {"error_ratio": 1, "p95_ms": 20 * TAIL, "p99_ms": 100 * TAIL}


LATENCIES = ("p95_ms", "p99_ms")


def limits_of(
    name: str, limits: dict[str, float], objectives: dict[str, float]
) -> dict[str, float]:
    """A request kind's limits (`METHOD <model> <kind>`): the latency ones raised to its
    model's objective (the catalog's slo.p99_ms) where that is higher, the total's to the
    highest objective: a detector's tiles are held to its 250 ms, not to a table row's 50."""
    parts = name.split(" ")
    objective = (
        objectives.get(parts[1], 0.0) if len(parts) > 1 else max(objectives.values(), default=0.0)
    )
    return {m: max(v, objective) if m in LATENCIES else v for m, v in limits.items()}


def breaches(
    results: dict[str, dict[str, Any]],
    limits: dict[str, float],
    objectives: dict[str, float] | None = None,
) -> list[str]:
    """`results`: per request kind (and "total"), requests and the measured metrics;
    `objectives`: each model's p99 objective, ms (limits_of)."""
    found = [
        f"{name}: {metric} {values[metric]:.4g} > {limit:g}"
        for name, values in results.items()
        for metric, limit in limits_of(name, limits, objectives or {}).items()
        if values["requests"] >= (1 if name == "total" else MIN_SAMPLES[metric])
        and values[metric] > limit
    ]
    if results.get("total", {}).get("requests", 0) == 0:
        found.append("total: no request was sent")
    return found
