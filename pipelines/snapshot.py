"""Stage snapshot@<key>: labelled production records -> a versioned training source.

The services log every served record (the prediction log) and the outcomes clients send
back (`/feedback`); this stage joins the two for one model into rows of its training schema
(the catalog's fields, and the target coded as the train split codes it), checks them with
the same schema as `prepare`, and splits them by time:

- `holdout.parquet`: the newest `production.holdout` share, never trained on: the quality
  gate's fresh production window (register compares candidate and champion on it);
- `train.parquet`: the rest, within `production.window_days` of the newest record: what
  `production.join: append` adds to the train split (`production.weight` copies of each).

DVC caches both, so a run records which snapshot it trained on (dvc.lock, and register's
MLflow dataset inputs). The log is read when the stage runs: `dvc repro` does not rerun it
on its own (the log is not a file DVC watches); `dvc repro --force snapshot@<key>` (`make
snapshot`) or a retraining job (which forces the model's stages) takes a new snapshot.
An empty log gives empty files, so a fresh clone's `dvc repro` is what it was.

Records the log holds no inputs for (over its size cap) or that fail the schema (a field
added since they were served) are left out and counted in reports/production/<key>.json;
a Feast-backed model's log holds entity keys, not the features served, so its snapshot is
empty and says why.
"""

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from pandera.errors import SchemaErrors

from contract import paths
from contract.catalog import ModelSpec
from contract.settings import get_settings
from pipelines.cli import StageError, run_stage
from pipelines.log import get_logger
from pipelines.schema import NUMERIC, raw_schema
from services.api.feedback import Example, read_examples
from services.api.predlog import PredictionLogUnavailable

log = get_logger(__name__)
PREDICTED_AT, LABELLED_AT = "_predicted_at", "_labelled_at"  # kept beside the schema's columns
REQUEST_ID, POSITION = "_request_id", "_position"
META = [REQUEST_ID, POSITION, PREDICTED_AT, LABELLED_AT]
SHOWN_FAILURES = 5  # schema failures quoted in the report


def frame_of(examples: list[Example], spec: ModelSpec, seen: pd.Series) -> pd.DataFrame:
    """The examples as rows of the model's raw schema (fields, target) plus META, oldest
    first; `seen`: the train split's target column, whose coding the outcomes take."""
    names = list(spec.fields)
    rows = sorted(examples, key=lambda e: (e.predicted_at, e.request_id, e.position))
    columns: dict[str, Any] = {}
    for name, field in spec.fields.items():
        values = pd.Series([(e.inputs or {}).get(name) for e in rows], dtype=object)
        columns[name] = pd.to_numeric(values, errors="coerce") if field.type in NUMERIC else values
    frame = pd.DataFrame(columns, columns=names)
    targets = spec.task_kind.targets([e.outcome for e in rows], spec, seen)
    frame[spec.target.column] = targets.to_numpy() if len(rows) else targets
    frame[REQUEST_ID] = pd.Series([e.request_id for e in rows], dtype=object)
    frame[POSITION] = pd.Series([e.position for e in rows], dtype="int64")
    frame[PREDICTED_AT] = pd.Series([e.predicted_at for e in rows], dtype="float64")
    frame[LABELLED_AT] = pd.Series([e.labelled_at for e in rows], dtype="float64")
    return frame


def valid(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, list[str]]:
    """(the rows that pass prepare's schema, what failed): a failing row is left out, a
    failing column (missing, wrong type) leaves every row out. The target's values come
    from its own coding (`targets`); its checks of a whole data set (both classes present)
    do not hold for a window of outcomes, which may well be one class."""
    if frame.empty:  # nothing read (a skipped model, an empty log): nothing can fail
        return frame, []
    schema = raw_schema(spec).update_column(spec.target.column, checks=[], nullable=False)
    try:
        schema.validate(frame.drop(columns=META), lazy=True)
        return frame, []
    except SchemaErrors as exc:
        cases = exc.failure_cases
    failures = [
        f"{row.column}: {row.check} (e.g. {row.failure_case!r})"
        for row in cases.drop_duplicates(["column", "check"]).head(SHOWN_FAILURES).itertuples()
    ]
    rows = cases["index"].dropna()
    if len(rows) < len(cases):  # a whole column failed: no row can be trusted
        return frame.iloc[:0], failures
    return frame.drop(index=rows.astype(int).unique()), failures


def split(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the newest `holdout` share held out; of the rest, the records
    within `window_days` of the newest one."""
    held = math.ceil(len(frame) * spec.production.holdout)
    train, holdout = frame.iloc[: len(frame) - held], frame.iloc[len(frame) - held :]
    if spec.production.window_days is not None and len(frame):
        since = float(frame[PREDICTED_AT].max()) - spec.production.window_days * 86400
        train = train[train[PREDICTED_AT] >= since]
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def take(spec: ModelSpec, root: Path, url: str) -> dict[str, Any]:
    """Write the snapshot's two files; what it holds (the report)."""
    report: dict[str, Any] = {"model": spec.key, "join": spec.production.join}
    seen = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")[spec.target.column]
    examples: list[Example] = []
    if spec.features:
        report["skipped"] = "Feast-backed: the log holds entity keys, not the features served"
    elif not spec.task_kind.LEARNS_FROM_OUTCOMES:
        report["skipped"] = f"{spec.task} models do not learn from outcomes"
    elif url in ("", "off"):
        report["skipped"] = "PREDICTION_LOG=off"
    else:
        try:
            examples = read_examples(url, spec.key, spec.production.records)
        except PredictionLogUnavailable as exc:
            raise StageError(f"the prediction log ({url}) cannot be read: {exc}") from exc
    kept = [e for e in examples if e.inputs is not None]
    try:
        frame = frame_of(kept, spec, seen)
    except ValueError as exc:  # an outcome the target's coding has no value for
        raise StageError(f"outcomes of {spec.key} do not fit its target: {exc}") from exc
    checked, failures = valid(frame, spec)
    train, holdout = split(checked, spec)
    folder = paths.production_dir(spec.key, root)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet", index=False)
    holdout.to_parquet(folder / "holdout.parquet", index=False)
    report |= {
        "labelled": len(examples),
        "without_inputs": len(examples) - len(kept),  # over the log's size cap
        "invalid": len(frame) - len(checked),
        "schema_failures": failures,
        "train": len(train),
        "holdout": len(holdout),
        "outside_window": len(checked) - len(train) - len(holdout),
        "predicted_from": float(checked[PREDICTED_AT].min()) if len(checked) else None,
        "predicted_to": float(checked[PREDICTED_AT].max()) if len(checked) else None,
    }
    return report


def training_rows(spec: ModelSpec, root: Path) -> pd.DataFrame:
    """What joins the train split: the snapshot's training part, `weight` copies of each
    record, in the raw schema's columns; nothing unless `production.join` says append."""
    if spec.production.join == "none":
        return pd.DataFrame()
    rows = pd.read_parquet(paths.production_dir(spec.key, root) / "train.parquet")
    rows = rows.drop(columns=META)
    return pd.concat([rows] * spec.production.weight, ignore_index=True)


def holdout(spec: ModelSpec, root: Path) -> pd.DataFrame:
    """The gate's fresh production window (raw schema's columns and META)."""
    return pd.read_parquet(paths.production_dir(spec.key, root) / "holdout.parquet")


def log_url(url: str, root: Path) -> str:
    """The log's URL, a relative SQLite path taken from the workspace `root` (where the
    services of that workspace write it), not from this code's checkout."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_absolute():
        return f"sqlite:///{root.resolve() / url.removeprefix('sqlite:///')}"
    return url


def main_work(spec: ModelSpec, root: Path) -> None:
    url = log_url(get_settings().prediction_log, root)
    report = take(spec, root, url)
    target = paths.snapshot_report(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n")
    if report["schema_failures"]:
        log.warning("%s: %d records fail the schema: %s", spec.key, report["invalid"],
                    "; ".join(report["schema_failures"]))  # fmt: skip
    log.info(
        "%s: %d labelled records: %d train, %d held out (%s)",
        spec.key,
        report["labelled"],
        report["train"],
        report["holdout"],
        report.get("skipped", f"join: {spec.production.join}"),
    )


def main(argv: list[str] | None = None) -> None:
    run_stage("snapshot", main_work, argv)


if __name__ == "__main__":
    main()
