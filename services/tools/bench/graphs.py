"""The exported graphs alone, in-process: what ONNX Runtime's own time per batch is, and where
it goes (its profiler, per operator type).

    python -m services.tools.bench.graphs [--models house_prices churn] [--out reports/bench]

Each graph runs as the services run it (one intra-op thread, every graph optimisation) on rows
of its model's test split, repeated up to 1000: batch 1 and batch 1000, then five profiled
batches of 1000. The rows/s of a 1000-row batch here are the ceiling of the service's
(`make bench`'s 1000-row column) on one core: a graph under 100k rows/s cannot serve 100k.
Writes reports/bench/graphs.{md,json}.
"""

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from contract import paths
from contract.catalog import get_spec, load_catalog
from contract.feeds import onnx_feeds
from contract.paths import ROOT
from services.tools.bench import report

BATCH, PROFILED = 1000, 5


def options(profile_dir: Path | None = None) -> ort.SessionOptions:
    chosen = ort.SessionOptions()
    chosen.intra_op_num_threads = chosen.inter_op_num_threads = 1  # as services/api/runtime.py
    chosen.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    chosen.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir is not None:
        chosen.enable_profiling = True
        chosen.profile_file_prefix = str(profile_dir / "ort")
    return chosen


def batch_feeds(key: str) -> dict[str, np.ndarray]:
    frame = pd.read_parquet(paths.split_dir(key, ROOT) / "test.parquet")
    repeated = pd.concat([frame] * (BATCH // len(frame) + 1), ignore_index=True).head(BATCH)
    return onnx_feeds(repeated, get_spec(key))


def seconds_per_run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    session.run(None, feeds)  # warm
    runs, started = 0, time.perf_counter()
    while runs < 5 or time.perf_counter() - started < 1.0:
        session.run(None, feeds)
        runs += 1
    return (time.perf_counter() - started) / runs


def measure(key: str, scratch: Path) -> dict[str, Any]:
    path = paths.served_model(key, ROOT)
    graph = onnx.load(str(path))
    feeds = batch_feeds(key)
    session = ort.InferenceSession(str(path), options(), providers=["CPUExecutionProvider"])
    single = seconds_per_run(session, {name: array[:1] for name, array in feeds.items()})
    batch = seconds_per_run(session, feeds)
    profiled = ort.InferenceSession(str(path), options(scratch), providers=["CPUExecutionProvider"])
    for _ in range(PROFILED):
        profiled.run(None, feeds)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    time_us: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            time_us[op] += event["dur"]
            nodes[op] += 1
    total = sum(time_us.values()) or 1
    return {
        "model": key,
        "inputs": len(graph.graph.input),
        "nodes": len(graph.graph.node),
        "batch_1_us": single * 1e6,
        "batch_1_rows_s": 1 / single,
        "batch_1000_ms": batch * 1e3,
        "batch_1000_rows_s": BATCH / batch,
        "ops": [
            {
                "op": op,
                "ms_per_batch": us / PROFILED / 1e3,
                "share": us / total,
                "nodes": nodes[op] // PROFILED,
            }
            for op, us in time_us.most_common()
        ],
    }


def markdown(found: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# The exported graphs alone (ONNX Runtime, one thread)",
        "",
        f"{info['date']}, {info['cpu_model']}, onnxruntime {info['packages']['onnxruntime']}; "
        f"rows of each test split; the top operators from ONNX Runtime's profiler "
        f"({PROFILED} batches of {BATCH}).",
        "",
        "| model | inputs | nodes | batch 1 | 1000-row batch | rows/s (1000) | top operators |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in found:
        top = ", ".join(f"{op['op']} {op['share']:.0%} ({op['nodes']})" for op in row["ops"][:3])
        lines.append(
            f"| {row['model']} | {row['inputs']} | {row['nodes']} | {row['batch_1_us']:.0f} us | "
            f"{row['batch_1000_ms']:.1f} ms | {row['batch_1000_rows_s']:,.0f} | {top} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    catalog = load_catalog()
    tabular = [
        key
        for key, spec in catalog.items()
        if all(f.type not in ("image", "series", "audio") for f in spec.fields.values())
        and spec.task_kind.BULK
    ]
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.graphs", description=__doc__
    )
    parser.add_argument("--models", nargs="+", choices=sorted(catalog), default=tabular)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    missing = [k for k in args.models if not paths.served_model(k, ROOT).exists()]
    if missing:
        print(f"error: not exported: {', '.join(missing)} (make repro)", file=sys.stderr)
        return 1
    found = []
    with tempfile.TemporaryDirectory(prefix="graphs-") as scratch:
        for key in args.models:
            row = measure(key, Path(scratch))
            print(f"{key}: {row['batch_1000_rows_s']:,.0f} rows/s at {BATCH}", flush=True)
            found.append(row)
    info = report.machine()
    text = markdown(found, info)
    print(report.save(args.out, "graphs", text, {"info": info, "graphs": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
