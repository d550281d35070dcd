"""Stage train@<key>: fit the catalog module's estimator on the train split."""

from pathlib import Path

import pandas as pd

from contract import paths
from contract.catalog import ModelSpec
from pipelines.cli import run_stage
from pipelines.models import get_project


def main_work(spec: ModelSpec, root: Path) -> None:
    project = get_project(spec.key)
    train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    out = paths.model_dir(spec.key, root)
    model = project.FLAVOR.fit(project.build(spec), train, spec, out)
    project.FLAVOR.save(model, out)


def main(argv: list[str] | None = None) -> None:
    run_stage("train", main_work, argv)


if __name__ == "__main__":
    main()
