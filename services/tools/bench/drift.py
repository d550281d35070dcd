"""`make bench`, last part: how long one drift run takes, per model and window size.

    python -m services.tools.bench.drift [--models titanic churn] [--windows 1000 10000]

A window of logged predictions is made the way the services make it (the test split's
records, the registered ONNX model's predictions, the prediction log's rows in a SQLite file
of the bench's own); then the drift service's run (read the log, drift view, Evidently
against the champion's reference, the HTML report) is timed. Writes
reports/bench/drift.{md,json}.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import onnxruntime as ort

from contract import paths
from contract.catalog import get_spec, load_catalog
from contract.feeds import onnx_feeds
from contract.paths import ROOT
from contract.settings import get_settings
from services.api.predlog import SQLiteSink, record_row
from services.api.runtime import LoadedModel
from services.api.store import Artifact
from services.drift import detect
from services.drift.settings import DriftSettings
from services.tools.bench import bodies, report
from services.tools.examples import as_records

REPEATS = 3


def fill(key: str, count: int, sink: SQLiteSink) -> None:
    """`count` predictions of the registered artifact, logged as a service logs them."""
    spec = get_spec(key)
    frame = bodies.rows(spec, count)
    path = paths.served_model(key)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = LoadedModel(spec, Artifact(key, "champion", "0", "", path, {}, "bench"), session)
    names = [o.name for o in session.get_outputs()]
    result = dict(zip(names, session.run(None, onnx_feeds(frame, spec)), strict=True))
    answer = {"model": key, "version": "0", "alias": "champion"}
    predictions = model.format(result)
    rows = []
    for start in range(0, len(frame), 100):  # requests of 100 records
        chunk = slice(start, start + 100)
        records = [SimpleNamespace(**r) for r in as_records(frame.iloc[chunk], spec)]
        body = answer | {"request_id": f"bench-{start}", "predictions": predictions[chunk]}
        rows.append(record_row(body, records, "/predict", time.time()))  # type: ignore[arg-type]
    sink.write(rows)


def measure(key: str, rows: int, scratch: Path) -> dict[str, Any]:
    log = scratch / f"{key}-{rows}.sqlite"
    fill(key, rows, SQLiteSink(log))
    settings = DriftSettings(
        prediction_log=f"sqlite:///{log}", window_rows=rows, min_rows=1, state_dir=scratch
    )
    spec, uri = get_spec(key), get_settings().mlflow_tracking_uri
    results = [detect.run(spec, settings, uri, scratch / "reports") for _ in range(REPEATS)]
    seconds = [r.seconds for r in results]
    return {
        "model": key,
        "rows": rows,
        "features": len(results[0].features),
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "first_s": seconds[0],  # includes downloading the reference from the registry
        "dataset_drifted": results[-1].dataset_drifted,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.bench.drift", description=__doc__
    )
    parser.add_argument("--models", nargs="+", default=list(load_catalog()))
    parser.add_argument("--windows", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import evidently  # noqa: F401  (its ~7 s import is the service's start-up, not a run)

    info = report.machine() | {"import_evidently_s": time.perf_counter() - started}
    found = []
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        for key in args.models:
            for rows in args.windows:
                found.append(measure(key, rows, Path(tmp)))
                f = found[-1]
                print(
                    f"[bench drift] {key} x{rows}: median {f['median_s']:.2f} s, "
                    f"first {f['first_s']:.2f} s, {f['features']} features",
                    flush=True,
                )
    lines = [
        "# Drift-run benchmark",
        "",
        f"{info['cpu_model']}; `import evidently` {info['import_evidently_s']:.1f} s "
        "(once, at start).",
        "A run: read the window from the prediction log, drift view, Evidently against the "
        f"champion's reference, HTML report. Median of {REPEATS}; the first run also downloads "
        "the reference.",
        "",
        "| model | window rows | features | median | max | first |",
        "|---|---|---|---|---|---|",
        *(
            f"| {f['model']} | {f['rows']:,} | {f['features']} | {f['median_s']:.2f} s | "
            f"{f['max_s']:.2f} s | {f['first_s']:.2f} s |"
            for f in found
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(report.save(args.out, "drift", text, {"machine": info, "runs": found}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
