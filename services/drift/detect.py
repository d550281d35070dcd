"""One drift run: a model's logged traffic against its champion's reference, with Evidently.

The reference is the training snapshot registered with the champion (contract.reference);
the window is the latest served predictions in the prediction log, put through the same
drift view. Inputs and the model's outputs are compared column by column (Wasserstein
distance for numbers, Jensen-Shannon for categories by default: a score that grows with the
drift, whatever the window's size); the report is kept as HTML.
"""

import functools
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from contract import reference
from contract.catalog import ModelSpec
from services.api import feedback
from services.api.predlog import prune, read_window
from services.drift.settings import DriftSettings


class EmptyWindow(ValueError):
    """Too few logged predictions for a verdict."""

    def __init__(self, message: str, rows: int) -> None:
        super().__init__(message)
        self.rows = rows


class NoReference(LookupError):
    """The registry has no champion with a reference snapshot (or cannot be reached)."""


@dataclass
class DriftResult:
    model: str
    version: str  # the champion whose reference was compared
    rows: int  # predictions in the window
    window_start: float
    window_end: float
    share_drifted: float  # of the input features
    dataset_drifted: bool
    features: dict[str, dict[str, Any]]  # per feature: score, method, threshold, drifted
    prediction: dict[str, dict[str, Any]]  # the same for the model's outputs
    skipped: dict[str, str] = field(default_factory=dict)  # columns without a value: why
    ran_at: float = field(default_factory=time.time)
    seconds: float = 0.0
    report: str = ""  # the HTML report's file

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=32)
def _reference(tracking_uri: str, model: str, version: str, run_id: str) -> pd.DataFrame:
    """A version's reference snapshot (versions never change: cached by version)."""
    import mlflow.artifacts

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not a terminal
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=reference.ARTIFACT, dst_path=tmp, tracking_uri=tracking_uri
        )
        return pd.read_parquet(path)


def champion_reference(tracking_uri: str, model: str) -> tuple[str, pd.DataFrame]:
    """(version, reference frame) of the model's current champion."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        version = client.get_model_version_by_alias(model, "champion")
        return str(version.version), _reference(
            tracking_uri, model, str(version.version), version.run_id
        )
    except Exception as exc:  # MLflow raises its own types per store; all mean "no reference"
        raise NoReference(
            f"no reference for {model}@champion: {type(exc).__name__}: {exc}"
        ) from exc


def window(spec: ModelSpec, settings: DriftSettings, now: float) -> pd.DataFrame:
    """The logged traffic in the drift view, with the prediction columns; `ts` kept aside."""
    found = read_window(
        settings.prediction_log,
        spec.key,
        settings.window_rows,
        now - settings.window_s,
        max_bytes=settings.window_max_bytes,
        timeout_s=settings.log_timeout_s,
    )  # PredictionLogUnavailable: the run fails, saying why
    if len(found) < settings.min_rows:
        raise EmptyWindow(
            f"{spec.key}: {len(found)} logged predictions in the last {settings.window_s:g} s; "
            f"at least {settings.min_rows} are needed (DRIFT_MIN_ROWS)",
            len(found),
        )
    inputs = pd.DataFrame([row[2] for row in found])
    view = reference.drift_view(spec, inputs)
    view = pd.concat([view, reference.outputs_view(spec, [row[3] for row in found])], axis=1)
    view.attrs["ts"] = (found[0][0], found[-1][0])
    return view


def prune_log(settings: DriftSettings) -> int:
    """The prediction log's retention (DRIFT_LOG_RETENTION_S, DRIFT_LOG_MAX_ROWS), then the
    outcomes whose predictions it deleted: rows deleted."""
    deleted = prune(
        settings.prediction_log,
        settings.log_retention_s,
        settings.log_max_rows,
        timeout_s=settings.log_timeout_s,
    )
    return deleted + feedback.prune(settings.prediction_log, settings.log_timeout_s)


def _dataset(frame: pd.DataFrame, columns: reference.Columns) -> Any:
    from evidently import DataDefinition, Dataset

    frame = frame.copy()
    for name in columns.categorical:  # one type per column, missing values as missing
        frame[name] = frame[name].astype("string").astype(object)
    definition = DataDefinition(
        numerical_columns=columns.numerical, categorical_columns=columns.categorical
    )
    return Dataset.from_pandas(frame, data_definition=definition)


def _usable(
    columns: reference.Columns, current: pd.DataFrame, ref: pd.DataFrame
) -> tuple[reference.Columns, dict[str, str]]:
    """The columns with values on both sides; a column with none (a rarely filled field in a
    small window) has no distribution to compare, and Evidently refuses it."""
    skipped = {}
    for name in columns.numerical + columns.categorical:
        for side, frame in (("window", current), ("reference", ref)):
            if not frame[name].notna().any():
                skipped[name] = f"no values in the {side}"
    keep = [c for c in columns.numerical if c not in skipped]
    return reference.Columns(keep, [c for c in columns.categorical if c not in skipped]), skipped


def run(
    spec: ModelSpec, settings: DriftSettings, tracking_uri: str, report_dir: Path
) -> DriftResult:
    """Compare the window with the champion's reference; write the HTML report."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    current = window(spec, settings, time.time())
    version, ref = champion_reference(tracking_uri, spec.key)
    columns, skipped = _usable(reference.columns(spec), current, ref)
    names = columns.numerical + columns.categorical
    preset = DataDriftPreset(
        columns=names,
        num_method=settings.num_method,
        cat_method=settings.cat_method,
        threshold=settings.threshold,
        drift_share=settings.drift_share,
    )
    snapshot = Report([preset]).run(
        current_data=_dataset(current[names], columns),
        reference_data=_dataset(ref[names], columns),
        name=f"{spec.key} v{version}",
    )
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            scores[config["column"]] = {
                "score": float(metric["value"]),
                "method": config["method"],
                "threshold": float(config["threshold"]),
                "drifted": float(metric["value"]) >= float(config["threshold"]),
            }
    features = {name: scores[name] for name in columns.features if name in scores}
    share = sum(f["drifted"] for f in features.values()) / max(1, len(features))
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"{spec.key}.html"
    snapshot.save_html(str(report))
    start, end = current.attrs["ts"]
    return DriftResult(
        model=spec.key,
        version=version,
        rows=len(current),
        window_start=start,
        window_end=end,
        share_drifted=share,
        dataset_drifted=share >= settings.drift_share,
        features=features,
        prediction={name: scores[name] for name in columns.outputs if name in scores},
        seconds=time.perf_counter() - started,
        report=str(report),
        skipped=skipped,
    )
