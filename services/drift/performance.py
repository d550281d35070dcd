"""Each watched model's performance on labelled traffic: the task's own metrics (contract
tasks' `performance`) over the outcomes sent back to its services (services.api.feedback),
per version and alias, with how many records were labelled and how late their labels came.

The window is the predictions of the last DRIFT_PERFORMANCE_WINDOW_S seconds that have an
outcome (at most DRIFT_PERFORMANCE_MAX_RECORDS, the newest outcomes first); a version with
fewer than DRIFT_PERFORMANCE_MIN_RECORDS labelled records gets no metric (AUC on a dozen
labels is noise), but its coverage and delay are still reported. Beside each live metric
with a floor, the value the version was registered with (held out at training) is exported,
so an alert can compare the two (ModelPerformanceDegraded). Evidently's classification or
regression preset renders the champion's labelled records as a report (`render`).
"""

import functools
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.catalog import ModelSpec
from services.api import feedback
from services.drift.settings import DriftSettings


@dataclass
class Performance:
    """One version (and alias) of a model, scored on its labelled traffic."""

    model: str
    version: str
    alias: str
    records: int  # labelled records in the window
    served: int  # records it served in the window
    coverage: float  # labelled / served
    delay_s: float  # median time from prediction to outcome
    metrics: dict[str, float]  # empty: fewer than min_records labelled
    registered: dict[str, float]  # its held-out values at registration, for floor metrics
    window_start: float
    window_end: float
    ran_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(
    spec: ModelSpec,
    settings: DriftSettings,
    tracking_uri: str,
    now: float | None = None,
    report: Path | None = None,
) -> list[Performance]:
    """Score every version that served labelled records in the window (newest first); a
    task with no outcome to send back (segments) has none. With `report`, Evidently's
    classification or regression report of the champion's labelled records is written
    there (where the task has a preset and the champion has min_records of them)."""
    if spec.task_kind.outcome(spec) is None:
        return []
    end = time.time() if now is None else now
    start = end - settings.performance_window_s
    labelled, served = feedback.read_labelled(
        settings.prediction_log, spec.key, start, settings.performance_max_records,
        settings.log_timeout_s,
    )  # fmt: skip
    groups: dict[tuple[str, str], list[feedback.Labelled]] = {}
    for record in labelled:
        groups.setdefault((record.version, record.alias), []).append(record)
    if report is not None:
        render(spec, groups, settings.performance_min_records, report)
    out = []
    for (version, alias), records in sorted(groups.items(), reverse=True):
        total = max(served.get((version, alias), 0), len(records))
        metrics: dict[str, float] = {}
        if len(records) >= settings.performance_min_records:
            predictions = [r.prediction for r in records]
            outcomes = [r.outcome for r in records]
            metrics = spec.task_kind.performance(spec, predictions, outcomes)
        out.append(
            Performance(
                spec.key, version, alias, len(records), total, len(records) / total,
                statistics.median(r.received_at - r.predicted_at for r in records),
                metrics, registered(tracking_uri, spec, version), start, end,
            )
        )  # fmt: skip
    return out


def render(
    spec: ModelSpec,
    groups: dict[tuple[str, str], list[feedback.Labelled]],
    min_records: int,
    path: Path,
) -> bool:
    """Evidently's report of the champion's labelled records (or, with no champion among
    them, of the version with the most): whether one was written. An older report that
    no longer has records behind it is removed rather than shown as current."""
    served = sorted(groups.items(), key=lambda g: (g[0][1] == "champion", len(g[1])))
    records = served[-1][1] if served else []
    view = None
    if len(records) >= min_records:
        predictions, outcomes = [r.prediction for r in records], [r.outcome for r in records]
        view = spec.task_kind.evidently_view(spec, predictions, outcomes)
    if view is None:
        path.unlink(missing_ok=True)
        return False
    from evidently import Dataset, Report

    frame, definition, preset = view
    with warnings.catch_warnings():  # a window of one class leaves ROC curves undefined
        warnings.simplefilter("ignore")
        snapshot = Report([preset]).run(Dataset.from_pandas(frame, data_definition=definition))
    path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(path))
    return True


def registered(tracking_uri: str, spec: ModelSpec, version: str) -> dict[str, float]:
    """The version's held-out metrics that have a floor, as registered; {} when the registry
    cannot say (the live metrics are reported all the same)."""
    try:
        metrics = _run_metrics(tracking_uri, spec.key, version)
    except Exception:  # MLflow's errors per store kind; unreachable: asked again next run
        return {}
    return {name: metrics[name] for name in spec.floors if name in metrics}


@functools.lru_cache(maxsize=256)
def _run_metrics(tracking_uri: str, model: str, version: str) -> dict[str, float]:
    """A registered version's run metrics (a version never changes: cached)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = client.get_model_version(model, version).run_id
    return dict(client.get_run(run_id).data.metrics) if run_id else {}
