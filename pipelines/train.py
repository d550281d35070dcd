"""Stage train@<key>: fit the catalog module's estimator on the train split, and on the
labelled production records of snapshot@<key> where `production.join` says so."""

from pathlib import Path

import pandas as pd

from contract import paths
from contract.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.log import get_logger
from pipelines.models import get_project
from pipelines.snapshot import training_rows

log = get_logger(__name__)


def training_set(spec: ModelSpec, root: Path) -> pd.DataFrame:
    """The train split, with the production records that join it appended."""
    train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    production = training_rows(spec, root)
    if production.empty:
        return train
    log.info(
        "%s: %d production rows (%d records x %d) join %d of the train split",
        spec.key,
        len(production),
        len(production) // spec.production.weight,
        spec.production.weight,
        len(train),
    )
    return pd.concat([train, production.reindex(columns=train.columns)], ignore_index=True)


def main_work(spec: ModelSpec, root: Path) -> None:
    project = get_project(spec.key)
    train = training_set(spec, root)
    out = paths.model_dir(spec.key, root)
    model = project.FLAVOR.fit(project.build(spec), train, spec, out)
    project.FLAVOR.save(model, out)


def main(argv: list[str] | None = None) -> None:
    run_stage("train", main_work, argv)


if __name__ == "__main__":
    main()
