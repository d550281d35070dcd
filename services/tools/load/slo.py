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


def breaches(results: dict[str, dict[str, Any]], limits: dict[str, float]) -> list[str]:
    """`results`: per request kind (and "total"), requests and the measured metrics."""
    found = [
        f"{name}: {metric} {values[metric]:.4g} > {limit:g}"
        for name, values in results.items()
        for metric, limit in limits.items()
        if values["requests"] >= (1 if name == "total" else MIN_SAMPLES[metric])
        and values[metric] > limit
    ]
    if results.get("total", {}).get("requests", 0) == 0:
        found.append("total: no request was sent")
    return found
