"""In-process online retrieval, timed: Feast's `get_online_features` and the service's own
`OnlineFeatures.fetch` (the same call plus found/stale handling), one process on one CPU."""

import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from contract.catalog import ModelSpec
from contract.paths import ROOT
from services.tools.bench.feast_stores import Store, environment
from services.tools.bench.servers import SERVER_CPU
from services.tools.examples import as_records

SIZES = (1, 10)  # entities per call
WARMUP = 100
SEED = 0
Call = Callable[[list[dict[str, Any]]], object]


@dataclass
class Timing:
    """`calls` timed calls of one kind, `entities` random entities each (ms)."""

    store: str
    model: str
    service: str
    call: str  # get_online_features | fetch
    entities: int
    calls: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], share: float) -> float:
    """Nearest rank on sorted `values`, as wrk and most load tools report it."""
    return values[min(len(values) - 1, max(0, round(share * len(values)) - 1))]


@contextlib.contextmanager
def pinned(cpu: str = SERVER_CPU) -> Iterator[None]:
    """This process on one CPU (the one the services get), as before afterwards."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def entity_pool(spec: ModelSpec, online: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Every entity id the feature views hold, and request fields taken from the test rows."""
    assert spec.features is not None
    key = spec.features.entity
    ids: set[str] = set()
    for view in online.store.list_feature_views():
        if view.name in online.ttl:  # the views of the model's FeatureService
            source = Path(view.batch_source.path)
            ids.update(pd.read_parquet(source, columns=[key])[key].astype(str))
    requests: list[dict[str, Any]] = [{}]
    if spec.features.request:
        frame = pd.read_parquet(ROOT / "data" / "split" / spec.key / "test.parquet")
        names = spec.features.request
        requests = [{n: r[n] for n in names} for r in as_records(frame, spec)]
    return sorted(ids), requests


def batches(
    spec: ModelSpec, pool: tuple[list[str], list[dict[str, Any]]], size: int, count: int
) -> list[list[dict[str, Any]]]:
    """`count` entity-row lists of `size` random entities (seeded: every store gets the same)."""
    assert spec.features is not None
    rng = random.Random(f"{SEED}-{spec.key}-{size}")
    ids, requests = pool
    return [
        [{spec.features.entity: rng.choice(ids)} | rng.choice(requests) for _ in range(size)]
        for _ in range(count)
    ]


def time_calls(call: Call, rows: list[list[dict[str, Any]]]) -> list[float]:
    """Each call's wall time in ms, after WARMUP untimed calls (on rows of their own)."""
    for entity_rows in rows[:WARMUP]:
        call(entity_rows)
    out = []
    for entity_rows in rows[WARMUP:]:
        started = time.perf_counter_ns()
        call(entity_rows)
        out.append((time.perf_counter_ns() - started) / 1e6)
    return out


def summary(store: str, spec: ModelSpec, call: str, size: int, ms: list[float]) -> Timing:
    assert spec.features is not None
    ordered = sorted(ms)
    return Timing(
        store, spec.key, spec.features.service, call, size, len(ms),
        statistics.fmean(ms), percentile(ordered, 0.50), percentile(ordered, 0.99), ordered[-1],
    )  # fmt: skip


def measure(store: Store, specs: list[ModelSpec], calls: int) -> list[Timing]:
    """Every model's FeatureService on `store`: both calls, each batch size."""
    from services.api.features import OnlineFeatures

    out = []
    with environment(store.env), pinned():
        for spec in specs:
            online = OnlineFeatures(spec, store.root)
            pool = entity_pool(spec, online)
            missing = sum(f.values is None for f in online.fetch(batches(spec, pool, 50, 1)[0]))
            if missing:
                raise RuntimeError(f"{store.name}: {missing} of 50 {spec.key} entities not found")

            def raw(rows: list[dict[str, Any]], online: Any = online) -> object:
                return online.store.get_online_features(
                    features=online.service, entity_rows=rows, full_feature_names=False
                )

            for size in SIZES:
                rows = batches(spec, pool, size, WARMUP + calls)
                for name, call in (("get_online_features", raw), ("fetch", online.fetch)):
                    out.append(summary(store.name, spec, name, size, time_calls(call, rows)))
    return out


def online_vector(store: Store, spec: ModelSpec, row: dict[str, Any]) -> dict[str, Any]:
    """One entity's record as the service builds it: its features and request fields."""
    from services.api.features import OnlineFeatures

    with environment(store.env):
        found = OnlineFeatures(spec, store.root).fetch([row])[0]
    assert spec.features is not None
    if found.values is None:
        raise RuntimeError(f"{store.name}: no features for {row}")
    return found.values | {name: row[name] for name in spec.features.request}
