"""The Feast feature store: `apply` and `materialize` stages, and training sets.

    python -m pipelines.features apply         # register feature_repo/ (stage features_apply)
    python -m pipelines.features materialize   # load the online store (stage features_materialize)

Which store is used is Feast's own choice by environment: feature_repo/feature_store.yaml
(SQLite, files) unless FEAST_FS_YAML_FILE_PATH names another file, such as
feature_repo/feature_store.production.yaml (Redis, Postgres registry). Each stage writes a
small JSON manifest for DVC to track: the registry and online store themselves are
external state, like the MLflow registry. `apply` writes two: apply.json, the declarations
(what every prepare stage depends on), and store.json, the store config in force (what
materialisation depends on besides). A workspace on the production store (a container)
thus prepares from the same apply.json as one on the embedded store, and DVC's run cache
restores its prepare stages instead of running all of them again.
"""

import argparse
import hashlib
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from contract.catalog import ModelSpec, load_catalog
from contract.features import feature_store, fs_yaml, keep_prometheus_environment, repo_path
from contract.paths import ROOT
from pipelines.log import configure, finish

log = logging.getLogger(__name__)


class FeatureStoreError(RuntimeError):
    """The feature store is missing something a stage needs; the message says what to run."""


def definitions_digest(root: Path = ROOT) -> str:
    """sha256 over the declarations (feature_repo/*.py): what `apply` registered, whichever
    store it registered them in (the offline store, which prepare joins from, is DuckDB
    over the same parquet files in both configs)."""
    digest = hashlib.sha256()
    for path in sorted(repo_path(root).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def store_config(root: Path = ROOT) -> dict[str, str]:
    """The store config in force, as written (before environment expansion: no secrets):
    materialisation depends on it, so a switch of online store re-runs it."""
    path = fs_yaml(root)
    return {"config": path.name, "config_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def apply(root: Path = ROOT) -> dict[str, Any]:
    """`feast apply` of feature_repo/, then the registered objects as a manifest."""
    keep_prometheus_environment()
    from feast.repo_config import load_repo_config
    from feast.repo_operations import apply_total, cli_check_repo

    repo = repo_path(root)
    config = load_repo_config(repo, fs_yaml(root))
    local = [config.registry.path, getattr(config.online_store, "path", None)]
    for path in filter(None, local):  # the embedded stores' folder (Feast makes only the last)
        if "://" not in str(path):
            (repo / str(path)).parent.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    try:  # as `feast apply`: the declarations are imported from the repo, which it chdirs into
        cli_check_repo(repo, fs_yaml(root))
        apply_total(config, repo, skip_source_validation=True)
    finally:
        os.chdir(cwd)
    store = feature_store(root)
    return {
        "project": store.project,
        "definitions_sha256": definitions_digest(root),
        "entities": sorted(e.name for e in store.list_entities()),
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "on_demand_feature_views": sorted(v.name for v in store.list_on_demand_feature_views()),
        "feature_services": {
            s.name: sorted(
                f"{p.name}:{f.name}" for p in s.feature_view_projections for f in p.features
            )
            for s in store.list_feature_services()
        },
    }


def materialize(root: Path = ROOT) -> dict[str, Any]:
    """Load each feature view's latest rows into the online store; a manifest of what went in.

    The window is each source's own span of event times, so the result is the same on every
    run: the online store holds every entity's latest snapshot as of the data's horizon.
    """
    store = feature_store(root)
    report: dict[str, Any] = {}
    for view in store.list_feature_views():
        source = Path(view.batch_source.path)
        path = source if source.is_absolute() else repo_path(root) / source
        if not path.exists():
            raise FeatureStoreError(f"{path} is missing: run `dvc repro` (prepare writes it)")
        table = pd.read_parquet(path, columns=[view.batch_source.timestamp_field, *view.join_keys])
        times = table[view.batch_source.timestamp_field]
        start, end = times.min().to_pydatetime(), times.max().to_pydatetime()
        log.info("materialising %s: %d rows, %s .. %s", view.name, len(table), start, end)
        store.materialize(start, end + pd.Timedelta(seconds=1), feature_views=[view.name])
        report[view.name] = {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "rows": len(table),
            "entities": int(table[view.join_keys].drop_duplicates().shape[0]),
        }
    return report


def training_frame(spec: ModelSpec, labels: pd.DataFrame, store: Any) -> pd.DataFrame:
    """The point-in-time join of the labelled entity rows with the model's FeatureService.

    Rows come back in the order of `labels` (Feast does not keep it), with the entity key,
    the event time, the request fields, the features and the target.
    """
    assert spec.features is not None
    try:
        service = store.get_feature_service(spec.features.service)
    except Exception as exc:  # Feast raises its own not-found types per registry kind
        raise FeatureStoreError(
            f"feature service {spec.features.service!r} is not registered: "
            f"run `dvc repro features_apply` ({exc})"
        ) from exc
    order = labels.assign(_row=range(len(labels)))
    joined: pd.DataFrame = store.get_historical_features(entity_df=order, features=service).to_df()
    joined = joined.sort_values("_row", kind="stable").drop(columns="_row")
    joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    return joined.reset_index(drop=True)


def feast_models(root: Path = ROOT) -> list[str]:
    """Catalog keys of the Feast-backed projects."""
    return [k for k, s in load_catalog(root / "params.yaml").items() if s.features]


def _write(report: dict[str, Any], path: Path) -> None:
    """The report with its keys sorted: registries list feature services in the order of their
    own history (the committed dvc.lock's manifest had churn_v1 first, a fresh registry here
    credit_default_v1: the one difference), and a manifest in another order re-ran every
    prepare stage, which depends on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.features")
    parser.add_argument("command", choices=["apply", "materialize"])
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: this repo)")
    args = parser.parse_args(argv)
    configure()
    logging.getLogger("feast").setLevel(logging.WARNING)
    started = datetime.now()
    try:
        report = apply(args.root) if args.command == "apply" else materialize(args.root)
    except FeatureStoreError as exc:
        log.error("features %s failed: %s", args.command, exc)
        sys.exit(2)
    _write(report, args.root / "reports" / "feast" / f"{args.command}.json")
    if args.command == "apply":
        _write(store_config(args.root), args.root / "reports" / "feast" / "store.json")
    log.info("features %s done in %.1f s", args.command, (datetime.now() - started).total_seconds())
    finish()


if __name__ == "__main__":
    main()
