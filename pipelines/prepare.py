"""Stage prepare@<key>: raw data from its package -> schema check -> raw parquet + split."""

from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from pipelines import paths
from pipelines.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.log import get_logger
from pipelines.schema import validate_raw
from pipelines.sources import load_source

log = get_logger(__name__)


def prepare(
    source: pd.DataFrame, spec: ModelSpec
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Drop the declared columns, validate the rest, split into (raw, train, test)."""
    raw = validate_raw(source.drop(columns=[c for c in spec.drop if c in source]), spec)
    if spec.split == "source":
        train, test = raw[raw["split"] == "train"], raw[raw["split"] == "test"]
        return raw, train.drop(columns="split"), test.drop(columns="split")
    stratify = (
        raw[spec.target.column] if spec.split.stratify and spec.task != "regression" else None
    )
    train, test = train_test_split(
        raw, test_size=spec.split.test_size, random_state=spec.split.seed, stratify=stratify
    )
    return raw, train, test


def main_work(spec: ModelSpec, root: Path) -> None:
    raw, train, test = prepare(load_source(spec.source), spec)
    paths.raw_data(spec.key, root).parent.mkdir(parents=True, exist_ok=True)
    raw.to_parquet(paths.raw_data(spec.key, root), index=False)
    split = paths.split_dir(spec.key, root)
    split.mkdir(parents=True, exist_ok=True)
    train.to_parquet(split / "train.parquet", index=False)
    test.to_parquet(split / "test.parquet", index=False)
    log.info("%s: %d rows valid, %d train / %d test", spec.key, len(raw), len(train), len(test))


def main(argv: list[str] | None = None) -> None:
    run_stage("prepare", main_work, argv)


if __name__ == "__main__":
    main()
