"""Request bodies from the held-out test rows, written to files for wrk."""

import json
from pathlib import Path

import pandas as pd

from contract.catalog import ModelSpec
from contract.feeds import onnx_feeds
from contract.paths import ROOT
from services.tools.examples import as_records

BATCH = 1000


def rows(spec: ModelSpec, count: int) -> pd.DataFrame:
    """The first `count` test rows, cycling through the test set when it is shorter."""
    frame = pd.read_parquet(ROOT / "data" / "split" / spec.key / "test.parquet")
    repeats = -(-count // len(frame))
    return pd.concat([frame] * repeats, ignore_index=True).head(count)


def records_body(spec: ModelSpec, count: int, folder: Path) -> Path:
    """`{"records": [...]}`: the service's contract."""
    path = folder / f"{spec.key}-records-{count}.json"
    path.write_text(json.dumps({"records": as_records(rows(spec, count), spec)}))
    return path


def tensors_body(spec: ModelSpec, count: int, folder: Path) -> Path:
    """`{"inputs": {name: [[value], ...]}}`: what MLflow's scoring server takes for a model
    whose signature is a dict of tensors (one [-1, 1] tensor per field)."""
    feeds = onnx_feeds(rows(spec, count), spec)
    path = folder / f"{spec.key}-tensors-{count}.json"
    path.write_text(json.dumps({"inputs": {name: array.tolist() for name, array in feeds.items()}}))
    return path
