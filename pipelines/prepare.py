"""Stage prepare@<key>: raw data from its package -> schema check -> raw parquet + split.

Feast-backed projects (a `features:` entry) take one more turn: the source becomes a
timeline of feature tables (the offline store's files) and labelled entity rows, and the
training set is Feast's point-in-time join of the two.
"""

from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from contract import paths
from contract.catalog import ModelSpec
from contract.features import feature_store
from pipelines.cli import StageError, run_stage
from pipelines.features import FeatureStoreError, training_frame
from pipelines.log import get_logger
from pipelines.models import get_feature_project, get_project
from pipelines.schema import validate_raw
from pipelines.sources import load_source

log = get_logger(__name__)


def split(raw: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): the source's own split, a seeded (stratified) one, or the last rows in
    order (a time series: what is tested comes after everything trained on)."""
    if spec.split == "source":
        train, test = raw[raw["split"] == "train"], raw[raw["split"] == "test"]
        return train.drop(columns="split"), test.drop(columns="split")
    if not spec.split.shuffle:
        return train_test_split(raw, test_size=spec.split.test_size, shuffle=False)  # type: ignore[no-any-return]
    stratify = (
        raw[spec.target.column] if spec.split.stratify and spec.task_kind.STRATIFIED else None
    )
    train, test = train_test_split(
        raw, test_size=spec.split.test_size, random_state=spec.split.seed, stratify=stratify
    )
    return train, test


def prepare(
    source: pd.DataFrame, spec: ModelSpec, root: Path = paths.ROOT
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Drop the declared columns, validate the rest, split into (raw, train, test).

    For a Feast-backed project `raw` is the point-in-time training set, and the feature
    tables are written under `root` for the offline store to read.
    """
    reshape = getattr(get_project(spec.key), "records", None)
    if reshape is not None:  # e.g. a time series cut into forecast origins
        source = reshape(source, spec)
    kept = source.drop(columns=[c for c in spec.drop if c in source])
    if not spec.features:
        raw = validate_raw(kept, spec)
        return (raw, *split(raw, spec))
    timeline = get_feature_project(spec.key).timeline(validate_raw(kept, spec, source=True), spec)
    folder = paths.offline_dir(spec.key, root)
    folder.mkdir(parents=True, exist_ok=True)
    tables = timeline.tables | {"labels": timeline.labels}
    for name, table in tables.items():  # microseconds: DuckDB cannot cast TIMESTAMPTZ_NS
        table.to_parquet(folder / f"{name}.parquet", index=False, coerce_timestamps="us")
    try:
        joined = training_frame(spec, timeline.labels, feature_store(root))
    except FeatureStoreError as exc:
        raise StageError(str(exc)) from exc
    raw = validate_raw(joined, spec)
    log.info(
        "%s: %s point-in-time joined with %d labelled rows",
        spec.key,
        spec.features.service,
        len(raw),
    )
    return (raw, *split(raw, spec))


def main_work(spec: ModelSpec, root: Path) -> None:
    raw, train, test = prepare(load_source(spec.source), spec, root)
    paths.raw_data(spec.key, root).parent.mkdir(parents=True, exist_ok=True)
    raw.to_parquet(paths.raw_data(spec.key, root), index=False)
    folder = paths.split_dir(spec.key, root)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(folder / "train.parquet", index=False)
    test.to_parquet(folder / "test.parquet", index=False)
    log.info("%s: %d rows valid, %d train / %d test", spec.key, len(raw), len(train), len(test))


def main(argv: list[str] | None = None) -> None:
    run_stage("prepare", main_work, argv)


if __name__ == "__main__":
    main()
