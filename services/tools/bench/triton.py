"""Triton's dynamic batching on CPU: throughput and latency against the batcher's settings
and model instances, for the vision graphs (the segmentation's, the detector's) and their BLS
models.

    python -m services.tools.bench.triton [--model KEY ...] [--out reports/bench]
        [--root a trained workspace, this checkout by default]

For each variant of the exported repository (artifacts/<key>/triton: the catalog's
`triton:` batching, then without a queue delay, then two instances) the local Triton
(services/triton/serve.py, PyTriton) is started on free ports, and closed-loop tritonclient
users, each sending one test image at a time over HTTP, run for DURATION_S at each
concurrency: images/s, p50 / p99 latency, and the batches the graph ran (Triton's
statistics: inferences per execution). The same through the BLS model (`<key>_image`: a PNG
in, the JSON answer out) at the highest concurrency. Writes reports/bench/triton.{md,json}.
"""

import argparse
import io
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contract import paths
from contract.catalog import load_catalog
from contract.feeds import decode_photo
from contract.paths import ROOT
from services.tools.bench import report
from services.tools.processes import free_port

PYTHON = ROOT / "services" / "triton" / ".venv" / "bin" / "python"
SERVE = ROOT / "services" / "triton" / "serve.py"
CONCURRENCY = (1, 8, 32)
DURATION_S = 8.0
IMAGES = 256
BLS = ROOT / "services" / "triton" / "bls"  # <task>/: the BLS model export renders


def bls_models() -> list[str]:
    """The catalog's models that Triton serves with a BLS model (their task has one)."""
    catalog = load_catalog()
    return [k for k, s in catalog.items() if s.triton is not None and (BLS / s.task).is_dir()]


def variant(source: Path, key: str, out: Path, delay_us: int | None, instances: int) -> Path:
    """A copy of the repository with the graph's batcher delay and instance count changed."""
    shutil.copytree(source, out)
    path = out / key / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    if delay_us is not None:
        config.dynamic_batching.max_queue_delay_microseconds = delay_us
    config.instance_group[0].count = instances
    path.write_text(text_format.MessageToString(config))
    return out


class Server:
    def __init__(self, repository: Path, models: list[str]) -> None:
        self.ports = [free_port() for _ in range(3)]
        args = [str(PYTHON), str(SERVE), "--repository", str(repository)]
        for flag, port in zip(
            ("--http-port", "--grpc-port", "--metrics-port"), self.ports, strict=True
        ):
            args += [flag, str(port)]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"127.0.0.1:{self.ports[0]}"
        with closing(httpclient.InferenceServerClient(self.url)) as client:
            for _ in range(360):
                try:
                    if all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # not up yet
                    pass
                if self.process.poll() is not None:
                    break
                time.sleep(0.5)
        self.log.seek(0)
        said = self.log.read().decode(errors="replace")[-3000:]
        self.stop()
        raise SystemExit(f"Triton did not start on {repository}:\n{said}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def counts(url: str, model: str) -> tuple[int, int]:
    with closing(httpclient.InferenceServerClient(url)) as client:
        (stats,) = client.get_inference_statistics(model)["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def drive(url: str, model: str, inputs: list[Any], users: int) -> dict[str, float]:
    """`users` closed-loop clients for DURATION_S: images/s and latency percentiles."""
    latencies: list[float] = []
    lock, stop = threading.Lock(), time.monotonic() + DURATION_S

    def user(offset: int) -> None:
        with closing(httpclient.InferenceServerClient(url)) as client:
            i = offset
            while time.monotonic() < stop:
                started = time.perf_counter()
                client.infer(model, inputs[i % len(inputs)])
                with lock:
                    latencies.append(time.perf_counter() - started)
                i += users

    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = np.asarray(latencies)
    return {
        "users": users,
        "images_s": len(seconds) / DURATION_S,
        "p50_ms": float(np.percentile(seconds, 50) * 1e3),
        "p99_ms": float(np.percentile(seconds, 99) * 1e3),
    }


def image_inputs(key: str, root: Path) -> tuple[list[Any], list[Any]]:
    """One test image each: as the graph's tensors (a segmentation's grey uint8 canvas, a
    detector's RGB picture and its size), and encoded (PNG) for the BLS model."""
    from PIL import Image

    spec = load_catalog()[key]
    (name,) = spec.fields
    frame = pd.read_parquet(paths.split_dir(key, root) / "test.parquet").head(IMAGES)
    tensors, pictures = [], []
    for value in frame[name]:
        if spec.fields[name].type == "photo":  # encoded already: the graph gets it decoded
            pixels, encoded = decode_photo(value), value
            size = httpclient.InferInput("image_size", [1, 2], "INT64")
            size.set_data_from_numpy(np.array([pixels.shape[:2]], np.int64))
            extra = [size]
        else:
            shape = spec.fields[name].shape or []
            pixels, extra = np.frombuffer(value, np.uint8).reshape(shape), []
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            encoded = buffer.getvalue()
        tensor = httpclient.InferInput(name, [1, *pixels.shape], "UINT8")
        tensor.set_data_from_numpy(pixels[None])
        tensors.append([tensor, *extra])
        picture = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
        picture.set_data_from_numpy(np.array([[encoded]], dtype=object))
        pictures.append([picture])
    return tensors, pictures


def measure(key: str, root: Path, scratch: Path) -> list[dict[str, Any]]:
    source = paths.onnx_model(key, root).parent / "triton"
    tensors, pictures = image_inputs(key, root)
    configured = text_format.Parse((source / key / "config.pbtxt").read_text(), mc.ModelConfig())
    delay = configured.dynamic_batching.max_queue_delay_microseconds
    variants = [("as configured", None, 1), ("no queue delay", 0, 1), ("two instances", None, 2)]
    rows = []
    for name, delay_us, instances in variants:
        repository = variant(source, key, scratch / name.replace(" ", "-"), delay_us, instances)
        server = Server(repository, [key, f"{key}_image"])
        try:
            for users in CONCURRENCY:
                before = counts(server.url, key)
                point = drive(server.url, key, tensors, users)
                after = counts(server.url, key)
                batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                rows.append(
                    {
                        "variant": name,
                        "model": key,
                        "delay_us": delay if delay_us is None else delay_us,
                        "instances": instances,
                        "mean_batch": batch,
                    }
                    | point
                )
                print(
                    f"{name}, {users} users: {point['images_s']:.0f} images/s, batch {batch:.1f}",
                    flush=True,
                )
            point = drive(server.url, f"{key}_image", pictures, CONCURRENCY[-1])
            rows.append(
                {
                    "variant": name,
                    "model": f"{key}_image",
                    "delay_us": delay if delay_us is None else delay_us,
                    "instances": instances,
                    "mean_batch": float("nan"),
                }
                | point
            )
        finally:
            server.stop()
    return rows


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Triton's dynamic batching on CPU (local PyTriton server)",
        "",
        f"{info['date']}, {info['cpu_model']}, nproc {info['nproc']}; closed-loop tritonclient "
        f"HTTP users, one test image a request, {DURATION_S:g} s a point; the graph's batches "
        f"from Triton's statistics (inferences per execution). Graphs of {info['workspace']}.",
        "",
        "| variant | model | queue delay | instances | users | images/s | p50 | p99 | mean batch |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        batch = "" if r["mean_batch"] != r["mean_batch"] else f"{r['mean_batch']:.1f}"
        lines.append(
            f"| {r['variant']} | {r['model']} | {r['delay_us']} us | {r['instances']} | "
            f"{r['users']} | {r['images_s']:,.0f} | {r['p50_ms']:.1f} ms | "
            f"{r['p99_ms']:.1f} ms | {batch} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.triton", description=__doc__
    )
    parser.add_argument(
        "--model", action="append", dest="models",
        help="a model with a Triton repository and a BLS model (default: every such model)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    parser.add_argument(
        "--root", type=Path, default=ROOT,
        help="a trained workspace (its artifacts and test split): throughput depends on the "
        "graph's shapes, not on how long its weights were trained",
    )  # fmt: skip
    args = parser.parse_args(argv)
    models = args.models or bls_models()
    for key in models:
        source = paths.onnx_model(key, args.root).parent / "triton"
        if not (source / f"{key}_image" / "config.pbtxt").exists():
            print(f"error: no {source} with a BLS model (make repro)", file=sys.stderr)
            return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="triton-bench-") as scratch:
        for key in models:
            rows += measure(key, args.root, Path(scratch) / key)
    info = report.machine() | {"workspace": str(args.root)}
    print(report.save(args.out, "triton", markdown(rows, info), {"info": info, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
