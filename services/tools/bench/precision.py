"""FP32 against INT8 for the models with an `int8:` entry: what quantization costs and saves.

    python -m services.tools.bench.precision [--models fashion_cnn ...] [--out reports/bench]

Each exported graph (artifacts/<key>/model.onnx) and its INT8 graph (artifacts/<key>/int8/,
ONNX Runtime's static or dynamic quantization, pipelines/quantize.py) run in-process on CPU as
the services run them (one intra-op thread, every graph optimisation, a transformer's
tokenizer before it) on rows of the test split:
latency p50 / p99 of single records (photos at their own size), and rows per second of a
32-row batch (photos padded to the batch's largest). The metric and its drop are the export
stage's, on the whole test split; an INT8 graph more than `int8.max_drop` worse is not
shipped and is reported as such; a shipped one is the graph registered and served
(contract/paths.py `served_model`), which the last column says. GPU rows (TensorRT FP16
and INT8 through Triton) need a GPU machine, which the run that wrote a report either had
or says it did not; a model measured on a lent GPU machine by its own tool
(reports/bench/gpu/<key>.json, from `services.tools.bench.transformer_gpu`) gets
those measured rows instead. Writes reports/bench/precision.{md,json}.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from contract import paths
from contract.catalog import load_catalog
from contract.feeds import onnx_feeds
from contract.paths import ROOT
from services.tools.bench import report
from services.tools.bench.graphs import options

SINGLES, BATCH, BATCH_RUNS = 200, 32, 5
REPORT = "quantization.json"  # beside the INT8 graph (pipelines/quantize.py)
GPU_FOLDER = ROOT / "reports" / "bench" / "gpu"  # runs on a lent GPU machine, by model


def latencies(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Seconds of each single-record run, the records taken in turn."""
    session.run(None, feeds[0])  # warm
    times = []
    for i in range(SINGLES):
        started = time.perf_counter()
        session.run(None, feeds[i % len(feeds)])
        times.append(time.perf_counter() - started)
    return np.asarray(times)


def rows_per_second(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> float:
    session.run(None, feeds)  # warm
    started = time.perf_counter()
    for _ in range(BATCH_RUNS):
        session.run(None, feeds)
    return BATCH * BATCH_RUNS / (time.perf_counter() - started)


def measure(key: str, graph: Path, test: pd.DataFrame) -> dict[str, Any]:
    spec = load_catalog()[key]
    graph_session = ort.InferenceSession(str(graph), options(), providers=["CPUExecutionProvider"])
    session = spec.task_kind.serve(graph_session, graph.parent)  # a transformer's tokenizer
    singles = [onnx_feeds(test.iloc[[i]], spec) for i in range(min(len(test), 50))]
    batch = onnx_feeds(pd.concat([test] * (BATCH // len(test) + 1)).head(BATCH), spec)
    seconds = latencies(session, singles)
    return {
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
        "batch_rows_s": rows_per_second(session, batch),
        "mib": graph.stat().st_size / 2**20,
    }


def served_column(quantization: dict[str, Any]) -> tuple[str, str]:
    """Whether the FP32 and the INT8 graph are served: INT8 where export shipped it."""
    if quantization["shipped"]:
        return "no (INT8 is)", "yes"
    return "yes", "no (over the allowed drop)"


def rows(key: str) -> list[dict[str, Any]]:
    int8_graph = paths.int8_model(key, ROOT)
    quantization = json.loads((int8_graph.parent / REPORT).read_text())
    fp32_served, int8_served = served_column(quantization)
    test = pd.read_parquet(paths.split_dir(key, ROOT) / "test.parquet").head(BATCH)
    found = [
        {"model": key, "precision": "FP32", "device": "CPU (ONNX Runtime)"}
        | measure(key, paths.onnx_model(key, ROOT), test)
        | {"metric": quantization["metric"], "value": quantization["fp32"], "drop": 0.0}
        | {"served": fp32_served}
    ]
    int8 = {"model": key, "precision": "INT8", "device": "CPU (ONNX Runtime)"}
    int8 |= {"metric": quantization["metric"], "value": quantization["int8"]}
    int8 |= {"drop": quantization["drop"], "served": int8_served}
    if int8_graph.exists():
        int8 |= measure(key, int8_graph, test)
    found.append(int8)
    return found


def markdown(found: list[dict[str, Any]], info: dict[str, Any], gpu: str) -> str:
    lines = [
        "# FP32 against INT8 (ONNX Runtime quantization)",
        "",
        f"{info['date']}, {info['cpu_model']}, onnxruntime {info['packages']['onnxruntime']}, "
        f"one intra-op thread; latency of {SINGLES} single records of the test split, "
        f"throughput of {BATCH}-row batches; the metric on the whole test split (export).",
        "",
        "| model | precision | device | p50 (batch 1) | p99 (batch 1) | rows/s (batch 32) "
        "| size | metric | drop | served |",
        "|---|---|---|--:|--:|--:|--:|---|--:|---|",
    ]
    for row in found:
        timed = "p50_ms" in row
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['device']} | "
            + (
                f"{row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | {row['batch_rows_s']:,.0f} | "
                f"{row['mib']:.2f} MiB | "
                if timed
                else "| | | | "
            )
            + f"{row['metric']} {row['value']:.4f} | {row['drop']:+.4f} | {row['served']} |"
        )
    for key in dict.fromkeys(r["model"] for r in found):
        metric = next(r["metric"] for r in found if r["model"] == key)  # the gate metric
        measured = gpu_rows(key, GPU_FOLDER, metric)
        lines += measured or [
            f"| {key} | {precision} | GPU (TensorRT via Triton) | {gpu} | | | | | | |"
            for precision in ("FP16", "INT8")
        ]
    return "\n".join(lines) + "\n"


def gpu_rows(key: str, folder: Path, metric: str) -> list[str]:
    """Table rows of a GPU run of the model (reports/bench/gpu/<key>.json: its device,
    framework, and per precision `metric`, latencies and batch throughput), if any."""
    source = folder / f"{key}.json"
    if not source.exists():
        return []
    run = json.loads(source.read_text())
    base = run["rows"][0][metric]  # the run's own FP32: the drop is against it
    device = f"GPU ({run['device']}, PyTorch {run['torch']}; no TensorRT there)"
    return [
        f"| {key} | {row['precision'].replace('float', 'FP')} | {device} | "
        f"{row['p50_ms']:.2f} ms | {row['p99_ms']:.2f} ms | {row['batch_rows_s']:,.0f} | | "
        f"{metric} {row[metric]:.4f} | {base - row[metric]:+.4f} | measured, not served |"
        for row in run["rows"]
    ]


def main(argv: list[str] | None = None) -> int:
    catalog = load_catalog()
    quantized = [key for key, spec in catalog.items() if spec.int8 is not None]
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.precision", description=__doc__
    )
    parser.add_argument("--models", nargs="+", choices=quantized, default=quantized)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    parser.add_argument(
        "--gpu",
        default="not measured: no GPU machine was available to this run",
        help="what the GPU rows say (a run on a GPU machine fills them from perf_analyzer)",
    )
    args = parser.parse_args(argv)
    missing = [k for k in args.models if not (paths.int8_model(k, ROOT).parent / REPORT).exists()]
    if missing:
        print(f"error: no INT8 report for {', '.join(missing)} (make repro)", file=sys.stderr)
        return 1
    found = []
    for key in args.models:
        found += rows(key)
        print(f"{key}: measured", flush=True)
    info = report.machine()
    text = markdown(found, info, args.gpu)
    print(report.save(args.out, "precision", text, {"info": info, "rows": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
