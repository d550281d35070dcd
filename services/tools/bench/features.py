"""`make bench`, second part: the Feast feature layer, in-process and over HTTP.

    python -m services.tools.bench.features [--quick] [--models churn credit_default] [--no-redis]

1. In-process: `get_online_features` and the service's `OnlineFeatures.fetch` on the
   SQLite store (data/feast/) and on Redis (registry in a Postgres database of its own,
   applied and materialised for the run, removed after it), 1 and 10 entities per call.
2. HTTP: each Feast-backed model's service (one worker, CPU 0; wrk on CPU 1) answering the
   same entity as raw features and by its key, at 1 and 16 connections, on each store.

Writes reports/bench/features.{md,json}.
"""

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from contract.catalog import ModelSpec, get_spec, load_catalog
from contract.paths import ROOT
from services.tools.bench import bodies, features_report, online, report, servers, wrk
from services.tools.bench.__main__ import load_average, prefetch
from services.tools.bench.feast_stores import (
    Store,
    StoreError,
    environment,
    redis_store,
    sqlite_store,
)
from services.tools.bench.features_report import Http
from services.tools.examples import as_entities, entity_rows

CONNECTIONS = (1, 16)
REDIS = "127.0.0.1:6379,db=5"  # a db of the bench's own: it must be empty, and is flushed after
REGISTRY_DB = "postgresql://postgres@127.0.0.1:5432/feast_bench"  # created, then dropped


def log(message: str) -> None:
    print(f"[bench features {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_bodies(store: Store, spec: ModelSpec, folder: Path) -> dict[str, Path]:
    """The first test row's entity, by key and as the record the online store gives for it."""
    assert spec.features is not None
    frame = bodies.rows(spec, 1)
    entity_body = as_entities(frame, spec)
    record = online.online_vector(store, spec, entity_rows(frame, spec)[0])
    out = {}
    for name, body in (("records", {"records": [record]}), ("entities", entity_body)):
        out[name] = folder / f"{spec.key}-{store.name}-{name}.json"
        out[name].write_text(json.dumps(body))
    return out


def same_prediction(url: str, paths: dict[str, Path]) -> None:
    """Both bodies answer 200 with the same prediction (the entity one adds its key and time)."""
    raw, keyed = (servers.check_post(url, paths[n].read_bytes()) for n in ("records", "entities"))
    first, second = raw["predictions"][0], keyed["predictions"][0]
    if any(second.get(name) != value for name, value in first.items()):
        raise servers.ServerError(f"entity and raw answers differ: {second} vs {first}")


def bench_http(store: Store, spec: ModelSpec, scratch: Path, duration: float) -> list[Http]:
    """One service, both bodies: warm-ups, then at each connection count raw, then entity."""
    paths = write_bodies(store, spec, scratch)
    results = {name: Http(store.name, spec.key, name) for name in paths}
    command = [sys.executable, "-m", "services.serve", spec.key, "--port", "{port}"]
    env = store.env | {"SERVE_FEATURE_ROOT": str(store.root)}
    log_file = scratch / "logs" / f"serve-{spec.key}-{store.name}.log"
    label = f"{store.name} / {spec.key}"
    log(f"{label}: starting the service")
    try:
        with servers.running([*command, "--workers", "1"], "/readyz", log_file, env) as base:
            url = base + "/predict"
            same_prediction(url, paths)
            for path in paths.values():
                wrk.run(url, path, CONNECTIONS[-1], max(1.0, duration / 3))
            for count in CONNECTIONS:
                for name, path in paths.items():  # alternated, so drift hits both alike
                    point = wrk.run(url, path, count, duration)
                    results[name].points.append(point)
                    log(
                        f"{label} {name}: {count} conn: {point.rps:,.0f} req/s, "
                        f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms"
                    )
    except (servers.ServerError, wrk.WrkError) as exc:
        for result in results.values():
            result.error = str(exc)
        log(f"ERROR {label}: {exc}")
    return list(results.values())


def run(args: argparse.Namespace, scratch: Path, info: dict[str, Any]) -> tuple[list[Any], ...]:
    """Both parts on every store that could be built; (timings, http results)."""
    specs = [get_spec(key) for key in args.models]
    calls = 200 if args.quick else args.calls
    timings: list[online.Timing] = []
    http: list[Http] = []
    with contextlib.ExitStack() as stack:
        stores = [sqlite_store()]
        if not args.no_redis:
            log(f"building the Redis store ({args.redis}, registry {args.registry_db})")
            try:
                stores.append(
                    stack.enter_context(redis_store(args.redis, args.registry_db, scratch))
                )
            except StoreError as exc:
                info["notes"].append(f"Redis variant not measured: {exc}")
                log(f"ERROR: {exc}")
        for store in stores:
            log(f"{store.name}: in-process, {calls} calls per point")
            found = online.measure(store, specs, calls)
            for t in found:
                log(f"{store.name} {t.service} {t.call} x{t.entities}: p50 {t.p50_ms:.3f} ms, "
                    f"p99 {t.p99_ms:.3f} ms")  # fmt: skip
            timings += found
        if not args.in_process_only:
            prefetch(args.models, scratch / "cache")
            log_url = f"sqlite:///{scratch / 'predictions.sqlite'}"
            stack.enter_context(
                environment(
                    {"SERVE_CACHE_DIR": str(scratch / "cache"), "SERVE_PREDICTION_LOG": log_url}
                )
            )
            for store in stores:
                for spec in specs:
                    http += bench_http(store, spec, scratch, 2.0 if args.quick else args.duration)
    return timings, http


def main(argv: list[str] | None = None) -> int:
    feast_models = [k for k, s in load_catalog().items() if s.features]
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.features", description=__doc__
    )
    parser.add_argument("--models", nargs="+", choices=feast_models, default=feast_models)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk point")
    parser.add_argument("--calls", type=int, default=1000, help="timed calls per in-process point")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points, 200 calls")
    parser.add_argument("--redis", default=REDIS, help="host:port,db=N of an empty Redis db")
    parser.add_argument("--registry-db", default=REGISTRY_DB, help="Postgres db to create")
    parser.add_argument("--no-redis", action="store_true", help="the SQLite store only")
    parser.add_argument("--in-process-only", action="store_true", help="skip the HTTP part")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    servers.terminate_on_sigterm()
    started = time.monotonic()
    info = report.machine() | {
        "feast": features_report.versions(),
        "duration_s": 2.0 if args.quick else args.duration,
        "load_before": load_average(),
        "notes": [],
    }
    log(f"load average {info['load_before']}; models {args.models}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-features-") as scratch:
            timings, http = run(args, Path(scratch), info)
    except KeyboardInterrupt:
        log("interrupted: servers stopped, Redis db flushed, registry db dropped; no report")
        return 130
    info |= {"load_after": load_average(), "run_s": time.monotonic() - started}
    found = features_report.checks(timings, http, args.models)
    print(features_report.write(args.out, timings, http, found, info))
    log(f"wrote {args.out / 'features.md'} and features.json")
    return 1 if any(h.error for h in http) else 0


if __name__ == "__main__":
    sys.exit(main())
