"""`make bench`, third part: what the durable prediction log costs /predict.

    python -m services.tools.bench.predlog [--quick] [--models titanic house_prices] [--no-postgres]

The same service (one worker, CPU 0; wrk on CPU 1) three times over: prediction log off,
SQLite (WAL, the default) and Postgres (the production variant), started together and
measured alternately at each connection count, single records and 100-record batches.
Afterwards the log must hold exactly the predictions wrk had answered. Target: the SQLite
log slows /predict by at most 10% (throughput) at every point.
Writes reports/bench/predlog.{md,json}.
"""

import argparse
import contextlib
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.catalog import get_spec
from contract.paths import ROOT
from services.tools.bench import bodies, report, servers, wrk
from services.tools.bench.__main__ import load_average, prefetch
from services.tools.bench.feast_stores import environment

POINTS = ((1, 1), (16, 1), (64, 1), (4, 100))  # (connections, records per request)
TARGET = 0.10  # at most this much slower than the same service without the log
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def log(message: str) -> None:
    print(f"[bench predlog {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Variant:
    model: str
    store: str  # off, sqlite, postgres
    url: str  # SERVE_PREDICTION_LOG
    points: list[dict[str, Any]] = field(default_factory=list)
    answered: int = 0  # records wrk got answers for (warm-ups included)
    # wrk stops with requests in flight: answered and logged, but not counted by wrk
    in_flight: int = 0
    logged: int = -1  # predictions in the log afterwards
    error: str = ""


COUNT = "SELECT coalesce(sum(records), 0) FROM predictions"  # predictions, not requests


def rows_in(url: str) -> int:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return int(db.execute(COUNT).fetchone()[0])
    import psycopg

    with psycopg.connect(url) as db:
        return int(db.execute(COUNT).fetchone()[0])  # type: ignore[index]


@contextlib.contextmanager
def postgres_database(prefix: str = "predlog_bench") -> Any:
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def bench_model(key: str, stores: dict[str, str], scratch: Path, duration: float) -> list[Variant]:
    spec = get_spec(key)
    body = {n: bodies.records_body(spec, n, scratch) for n in {n for _, n in POINTS}}
    variants = [Variant(key, name, url) for name, url in stores.items()]
    command = [sys.executable, "-m", "services.serve", key, "--port", "{port}", "--workers", "1"]
    with contextlib.ExitStack() as stack:
        urls = {}
        for variant in variants:
            log(f"{key}: starting the service with the prediction log {variant.store}")
            env = {"SERVE_PREDICTION_LOG": variant.url}
            log_file = scratch / "logs" / f"{key}-{variant.store}.log"
            urls[variant.store] = stack.enter_context(
                servers.running(command, "/readyz", log_file, env)
            )
        for variant in variants:  # one answer each, then a warm-up
            url = urls[variant.store] + "/predict"
            servers.check_post(url, body[1].read_bytes())
            variant.answered += 1
            warm = wrk.run(url, body[1], 16, max(1.0, duration / 3))
            variant.answered += warm.requests
            variant.in_flight += 16
        for connections, records in POINTS:
            for variant in variants:  # alternated, so the machine's drift hits all alike
                url = urls[variant.store] + "/predict"
                point = wrk.run(url, body[records], connections, duration)
                variant.points.append(point.as_dict() | {"records": records})
                variant.answered += point.requests * records
                variant.in_flight += connections * records
                log(
                    f"{key} {variant.store}: {connections} conn x {records} rec: "
                    f"{point.rps * records:,.0f} rec/s, p50 {point.p50_ms:.2f} ms, "
                    f"p99 {point.p99_ms:.2f} ms"
                )
    for variant in variants:  # the services are stopped: every commit is in
        if variant.store != "off":
            variant.logged = rows_in(variant.url)
    return variants


def counted(variant: Variant) -> bool:
    return variant.answered <= variant.logged <= variant.answered + variant.in_flight


def compare(variants: list[Variant]) -> list[dict[str, Any]]:
    """Per model, store and point: throughput and p99 against the same service without log."""
    out = []
    for variant in variants:
        if variant.store == "off":
            continue
        base = next(v for v in variants if v.model == variant.model and v.store == "off")
        for ours, theirs in zip(variant.points, base.points, strict=True):
            slower = 1 - ours["rps"] / theirs["rps"]
            out.append(
                {
                    "model": variant.model,
                    "store": variant.store,
                    "connections": ours["connections"],
                    "records": ours["records"],
                    "rps_off": theirs["rps"],
                    "rps_log": ours["rps"],
                    "slower": slower,
                    "p99_off_ms": theirs["p99_ms"],
                    "p99_log_ms": ours["p99_ms"],
                    "passed": variant.store != "sqlite" or slower <= TARGET,
                }
            )
    return out


def markdown(variants: list[Variant], rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Prediction-log benchmark",
        "",
        f"{info['cpu_model']}; {info['duration_s']:g} s per point; "
        f"load {info['load_before']} before, "
        f"{info['load_after']} after; one worker on CPU 0, wrk on CPU 1.",
        "",
        "| model | log | conn | records/req | rec/s off | rec/s with log | slower | "
        "p99 off | p99 with log | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = f"<= {TARGET:.0%}: {'PASS' if r['passed'] else 'FAIL'}"
        lines.append(
            f"| {r['model']} | {r['store']} | {r['connections']} | {r['records']} | "
            f"{r['rps_off'] * r['records']:,.0f} | {r['rps_log'] * r['records']:,.0f} | "
            f"{r['slower']:+.1%} | {r['p99_off_ms']:.2f} ms | {r['p99_log_ms']:.2f} ms | "
            f"{target if r['store'] == 'sqlite' else 'reported'} |"
        )
    lines += ["", "## Counts", ""]
    lines += ["| model | log | predictions wrk counted | in flight at wrk's stops (at most) | "
              "predictions in the log | result |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {v.model} | {v.store} | {v.answered:,} | {v.in_flight:,} | {v.logged:,} | "
        f"{'PASS' if counted(v) else 'FAIL'} |"
        for v in variants
        if v.store != "off"
    ]
    lines += ["", *(f"- {note}" for note in info["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.predlog", description=__doc__
    )
    parser.add_argument("--models", nargs="+", default=["titanic", "house_prices"])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk point")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    servers.terminate_on_sigterm()
    duration = 2.0 if args.quick else args.duration
    info = report.machine() | {"duration_s": duration, "load_before": load_average()}
    info["notes"] = [
        "wrk counts only answered requests; a 503 (log unavailable) would be an error point",
        "the log holds every prediction wrk counted (warm-ups and checks included), plus at "
        "most the requests in flight when a wrk run stopped (answered, not counted by wrk)",
    ]
    variants: list[Variant] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-predlog-") as tmp,
            contextlib.ExitStack() as s,
        ):
            scratch = Path(tmp)
            prefetch(args.models, scratch / "cache")
            s.enter_context(environment({"SERVE_CACHE_DIR": str(scratch / "cache")}))
            for key in args.models:
                stores = {"off": "off", "sqlite": f"sqlite:///{scratch / f'{key}.sqlite'}"}
                if not args.no_postgres:
                    stores["postgres"] = s.enter_context(postgres_database())
                try:
                    variants += bench_model(key, stores, scratch, duration)
                except (servers.ServerError, wrk.WrkError) as exc:
                    log(f"ERROR {key}: {exc}")
                    variants.append(Variant(key, "error", "", error=str(exc)))
    except KeyboardInterrupt:
        log("interrupted: servers stopped; no report")
        return 130
    info["load_after"] = load_average()
    measured = [v for v in variants if not v.error]
    rows = compare(measured)
    text = markdown(measured, rows, info)
    record = {"machine": info, "variants": [asdict(v) for v in variants], "comparison": rows}
    print(report.save(args.out, "predlog", text, record))
    counts_ok = all(counted(v) for v in measured if v.store != "off")
    failed = [v for v in variants if v.error] or not counts_ok
    return 1 if failed or not all(r["passed"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
