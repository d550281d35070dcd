"""`make bench`: the serving benchmark, in one run on one machine.

    python -m services.bench [--duration 10] [--models titanic churn] [--quick]

Every server runs one worker pinned to CPU 0 (`taskset -c 0`), wrk one thread pinned to CPU 1,
all on 127.0.0.1: the bare FastAPI floor with the same request model, the anchor (a
hand-written FastAPI + ONNX Runtime app on the same graph), the lean service, `mlflow models
serve` and the BentoML service. Writes reports/bench/serving.{md,json}.
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from pipelines.catalog import get_spec, load_catalog
from pipelines.paths import ROOT
from pipelines.settings import get_settings
from services.bench import bentoml_variants, bodies, report, servers, wrk
from services.bench.report import Result

Starter = Callable[[], AbstractContextManager[str]]
CONNECTIONS = (16, 64)
# A search costs ~9 ms of encoding a query: 64 connections only queue (p50 ~0.6 s, wrk's
# timeouts), its p99 is judged alone (1 connection), and a 1000-query batch is bulk work
# past the service's timeout
SEARCH_CONNECTIONS = (1, 16)
BATCH_CONNECTIONS = 4  # enough to keep one worker busy; more only queues
MLFLOW_MODELS = ("titanic", "house_prices")
BENTO_MODELS = ("titanic",)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    """One run: settings, scratch folder, and the results so far."""

    def __init__(self, duration: float, warmup: float, scratch: Path) -> None:
        self.duration, self.warmup, self.scratch = duration, warmup, scratch
        self.results: list[Result] = []

    def measure(
        self,
        result: Result,
        start: Starter,
        url_path: str,
        body: Path,
        connections: tuple[int, ...],
    ) -> None:
        """Start the server, check one answer, warm up, then one wrk run per connection count."""
        self.results.append(result)
        label = f"{result.model} / {result.server}" + (f" ({result.note})" if result.note else "")
        log(f"{label}: starting ({result.records} record(s) per request)")
        try:
            with start() as base:
                url = base + url_path
                servers.check_post(url, body.read_bytes())
                wrk.run(url, body, connections[0], self.warmup)
                for count in connections:
                    point = wrk.run(url, body, count, self.duration)
                    result.points.append(point)
                    rate = point.rps * result.records
                    unit = "rows/s" if result.records > 1 else "req/s"
                    log(
                        f"{label}: {count} conn: {rate:,.0f} {unit}, "
                        f"p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms"
                    )
        except (servers.ServerError, wrk.WrkError) as exc:
            result.error = str(exc)
            log(f"ERROR {label}: {exc}")

    def server(self, name: str, command: list[str], ready: str, env: dict[str, str]) -> Starter:
        log_file = self.scratch / "logs" / f"{name}.log"
        return lambda: servers.running(command, ready, log_file, env)


def prefetch(keys: list[str], cache: Path) -> None:
    """Download each champion once into a private cache: servers start without downloading,
    and the engineers' own services (the shared .serving-cache) are left alone."""
    from services.store import ModelStore

    store = ModelStore(get_settings().mlflow_tracking_uri, cache)
    for key in keys:
        if store.fetch(key, "champion") is None:
            raise SystemExit(f"error: {key} has no @champion in the registry (make repro)")


def bench_model(bench: Bench, key: str, tabular: bool) -> None:
    spec = get_spec(key)
    python = sys.executable
    one = bodies.records_body(spec, 1, bench.scratch)
    connections = SEARCH_CONNECTIONS if spec.task == "retrieval" else CONNECTIONS
    floor = [python, "-m", "services.bench.floor", key, "--port", "{port}"]
    bench.measure(
        Result(key, "floor", 1), bench.server(f"floor-{key}", floor, "/readyz", {}),
        "/predict", one, connections,
    )  # fmt: skip
    cache = str(bench.scratch / "cache")
    anchor = [python, "-m", "services.bench.anchor", key, "--port", "{port}", "--cache", cache]
    start_anchor = bench.server(f"anchor-{key}", anchor, "/readyz", {})
    bench.measure(Result(key, "anchor", 1), start_anchor, "/predict", one, connections)
    lean = [python, "-m", "services.serve", key, "--port", "{port}", "--workers", "1"]
    start_lean = bench.server(f"lean-{key}", lean, "/readyz", {})
    bench.measure(Result(key, "lean", 1), start_lean, "/predict", one, connections)
    if tabular:
        many = bodies.records_body(spec, bodies.BATCH, bench.scratch)
        for name, start in (("anchor", start_anchor), ("lean", start_lean)):
            result = Result(key, name, bodies.BATCH)
            bench.measure(result, start, "/predict", many, (BATCH_CONNECTIONS,))
    if key in MLFLOW_MODELS:
        mlflow = [
            *(str(servers.BIN / "mlflow"), "models", "serve", "-m", f"models:/{key}@champion"),
            *("--env-manager", "local", "-w", "1", "-h", "127.0.0.1", "-p", "{port}"),
        ]
        env = {"MLFLOW_TRACKING_URI": get_settings().mlflow_tracking_uri}
        start = bench.server(f"mlflow-{key}", mlflow, "/ping", env)
        tensors = bodies.tensors_body(spec, 1, bench.scratch)
        bench.measure(Result(key, "mlflow", 1), start, "/invocations", tensors, CONNECTIONS)
    if key in BENTO_MODELS:
        for variant in bentoml_variants.VARIANTS:
            command, env = bentoml_variants.command(variant, key, bench.scratch)
            start = bench.server(f"bentoml-{variant.name}-{key}", command, "/readyz", env)
            result = Result(key, "bentoml", 1, note=variant.name)
            bench.measure(result, start, "/predict", one, CONNECTIONS)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    catalog = load_catalog()
    parser = argparse.ArgumentParser(prog="python -m services.bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--models", nargs="+", choices=sorted(catalog), default=list(catalog))
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s points")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 CPUs: servers on CPU 0, wrk on CPU 1")
    duration = 2.0 if args.quick else args.duration
    servers.terminate_on_sigterm()
    info = report.machine() | {"duration_s": duration, "load_before": load_average()}
    log(f"load average {info['load_before']}; {duration:g} s per point; models {args.models}")
    tabular = [
        k
        for k in args.models
        if catalog[k].task != "retrieval"
        and all(f.type != "image" for f in catalog[k].fields.values())
    ]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        bench = Bench(duration, float(max(1, round(duration / 3))), Path(scratch))
        prefetch(args.models, bench.scratch / "cache")
        os.environ["SERVE_CACHE_DIR"] = str(bench.scratch / "cache")
        # The services run as deployed, prediction log included (its cost: services.bench.predlog)
        os.environ["SERVE_PREDICTION_LOG"] = f"sqlite:///{bench.scratch / 'predictions.sqlite'}"
        try:
            for key in args.models:
                bench_model(bench, key, key in tabular)
        except KeyboardInterrupt:
            log("interrupted: every server is stopped; no report written")
            return 130
    info["load_after"] = load_average()
    info["notes"] = bentoml_variants.NOTES
    found = report.checks(bench.results, args.models, tabular)
    print(report.write(args.out, bench.results, found, info))
    log(f"wrote {args.out / 'serving.md'} and serving.json")
    failed = [r for r in bench.results if r.error]
    if failed:
        log(
            f"ERROR: {len(failed)} measurement(s) failed: "
            + ", ".join(f"{r.model}/{r.server}" for r in failed)
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
