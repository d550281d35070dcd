"""Stage register@<key>: log the run and the ONNX model to MLflow, then gate the alias.

The model is the graph served (contract/paths.py `served_model`): the INT8 one where the
export stage shipped it, with the metrics export measured of it (tag `precision`), else FP32.

Every input is checked before MLflow is touched, so a failing stage leaves the registry as
it was. `champion` moves only for a version that meets every floor and is not worse than
the current champion on the same test split (and on the production window of the labelled
records snapshot@<key> held out); any other version becomes `challenger`, as does one
that passed where the entry's `production.rollout` is canary (the drift service ramps it).
"""

import hashlib
import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import onnx
import onnxruntime as ort
import pandas as pd
import yaml
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature

from contract import paths, reference
from contract.catalog import ModelSpec
from contract.feeds import one_at_a_time, onnx_feeds
from pipelines import export, model_card, quantize, registry, snapshot
from pipelines.cli import StageError, run_stage
from pipelines.export import Session
from pipelines.log import get_logger

log = get_logger(__name__)
EXAMPLE_ROWS = 3
# a photo's or a recording's example is one: MLflow writes the example as JSON and checks
# it through its own serving path, and three of the detector's photos took 48 s of a 57-s
# registration (millions of numbers deep-copied and encoded in Python)
SIZED_EXAMPLE_ROWS = 1
# What the registered artifact needs to run: ONNX Runtime, nothing of the training stack.
SERVING_REQUIREMENTS = [f"onnxruntime=={ort.__version__}", f"onnx=={onnx.__version__}"]


FEAST_TAGS = ("feast.feature_service", "feast.entity")
# a version tag per file served beside model.onnx: sha256.<file name> (services/api/store.py)
FILE_TAG_PREFIX = "sha256."


def _git(root: Path, *args: str) -> str | None:
    """git's output, or None where there is no git or no repository (the trainer image)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def lineage(key: str, root: Path) -> dict[str, str]:
    """Git commit and the DVC hashes of this model's data and artifacts, as run tags.

    Without a repository (an image) the commit is the one the image was built from
    (GIT_COMMIT, a build argument) and whether its tree was clean is unknown."""
    commit = _git(root, "rev-parse", "HEAD")
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "git_commit": commit or os.environ.get("GIT_COMMIT") or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
    }
    lock = root / "dvc.lock"
    # libyaml's loader: the catalog's dvc.lock is 7,000 lines (1.7 s in pure Python)
    text = lock.read_text() if lock.exists() else "{}"
    stages = yaml.load(text, Loader=yaml.CSafeLoader).get("stages", {})
    for stage in ("prepare", "snapshot", "train", "export"):
        for out in stages.get(f"{stage}@{key}", {}).get("outs", []):
            tags[f"dvc.{out['path']}"] = out.get("md5", "")
    return tags


def flat_params(spec: ModelSpec) -> dict[str, Any]:
    values = {f"param.{k}": v for k, v in spec.params.items()}
    split = spec.split if isinstance(spec.split, str) else spec.split.model_dump()
    values |= {"split": split, "gate_metric": spec.gate_metric, "task": spec.task}
    return values | {f"floor.{k}": str(b) for k, b in spec.floors.items()}


def load_inputs(
    spec: ModelSpec, root: Path
) -> tuple[onnx.ModelProto, dict[str, float], pd.DataFrame, pd.DataFrame]:
    """(the graph served, its metrics on the test split, the train and test splits)."""
    needed = [
        paths.served_model(spec.key, root),
        paths.metrics_file(spec.key, root),
        paths.reference_file(spec.key, root),
        paths.split_dir(spec.key, root) / "train.parquet",
        paths.split_dir(spec.key, root) / "test.parquet",
        paths.production_dir(spec.key, root) / "train.parquet",
        paths.production_dir(spec.key, root) / "holdout.parquet",
    ]
    missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
    if missing:
        raise StageError(f"missing {', '.join(missing)}: run `dvc repro register@{spec.key}`")
    metrics = served_metrics(spec, root, json.loads(needed[1].read_text()))
    absent = [k for k in spec.floors if k not in metrics]
    if absent:
        raise StageError(f"{needed[1].name} lacks the floor metrics {absent}")
    return (
        onnx.load_model(needed[0]),
        metrics,
        pd.read_parquet(needed[3]),
        pd.read_parquet(needed[4]),
    )


def precision(spec: ModelSpec, root: Path) -> str:
    """The served graph's arithmetic: int8 where the export stage shipped the INT8 graph."""
    return (
        "int8" if paths.served_model(spec.key, root) == paths.int8_model(spec.key, root) else "fp32"
    )


def served_metrics(spec: ModelSpec, root: Path, native: dict[str, float]) -> dict[str, float]:
    """The metrics of the graph served: the evaluate stage's (the native model's, which the
    FP32 graph reproduces within 1e-4) or, where the INT8 graph is served, those its export
    measured on the same test split, with the FP32 graph's kept as `fp32.<metric>`."""
    if precision(spec, root) == "fp32":
        return native
    report = paths.int8_model(spec.key, root).parent / quantize.REPORT
    measured: dict[str, float] = json.loads(report.read_text()).get("int8_metrics", {})
    if spec.gate_metric not in measured:
        raise StageError(
            f"{report.relative_to(root)} has no INT8 metrics: run `dvc repro export@{spec.key}`"
        )
    replaced = {f"fp32.{k}": native[k] for k in measured if k in native}
    return native | measured | replaced


def open_session(graph: onnx.ModelProto, spec: ModelSpec, root: Path) -> Session:
    """The graph as served, with what export wrote beside it (a search's index)."""
    return export.open_session(graph, spec, paths.onnx_model(spec.key, root).parent)


def served_files(spec: ModelSpec, root: Path) -> list[Path]:
    """What export wrote beside the graph for the service (a search's index and documents)."""
    folder = paths.onnx_model(spec.key, root).parent
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "model.onnx")


def log_reference(spec: ModelSpec, root: Path) -> None:
    """The drift service's reference, as the export stage made it of the graph served
    (pipelines/export.py `write_reference`): a sample of what the model is asked (the
    training split; a search's test rows, its queries) and its answers."""
    mlflow.log_artifact(
        str(paths.reference_file(spec.key, root)), artifact_path=reference.ARTIFACT_DIR
    )


def datasets(
    spec: ModelSpec, root: Path, frames: dict[str, pd.DataFrame]
) -> list[tuple[str, str, Path]]:
    """(MLflow context, frame, source) of each data set the run used: the splits, and the
    snapshot of labelled production records where it holds any (what joined training, the
    window the gate compared on), so a run names the snapshot it trained on."""
    split, production = paths.split_dir(spec.key, root), paths.production_dir(spec.key, root)
    found = [
        ("training", "train", split / "train.parquet"),
        ("testing", "test", split / "test.parquet"),
    ]
    if len(frames["production"]):
        found.append(("training", "production", production / "train.parquet"))
    if len(frames["holdout"]):
        found.append(("production_window", "holdout", production / "holdout.parquet"))
    return found


def log_run(
    spec: ModelSpec,
    root: Path,
    graph: onnx.ModelProto,
    metrics: dict[str, float],
    frames: dict[str, pd.DataFrame],
    tags: dict[str, str],
    card: str,
) -> tuple[str, str]:
    """One MLflow run: params, metrics, datasets, tags, card, ONNX model. (run id, version)."""
    rows = SIZED_EXAMPLE_ROWS if one_at_a_time(spec) else EXAMPLE_ROWS
    example = onnx_feeds(frames["test"].head(rows), spec)
    session = open_session(graph, spec, root)
    # MLflow's ONNX model is the graph alone, in its own inputs: a search's or a recogniser's
    # without what is served beside it, a transformer's taking token ids
    alone: Any = getattr(session, "session", session)
    tokens = getattr(session, "tokens", None)
    if callable(tokens):
        (field,) = spec.fields
        example = tokens(example[field].reshape(-1).tolist())
    names = [o.name for o in alone.get_outputs()]
    outputs = dict(zip(names, alone.run(names, example), strict=True))
    run_name = f"{spec.key}-{tags['git_commit'][:8]}"
    with mlflow.start_run(experiment_id=registry.experiment(spec.key), run_name=run_name) as run:
        mlflow.log_params(flat_params(spec))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tags(tags)
        for context, name, source in datasets(spec, root, frames):
            with warnings.catch_warnings():  # a dataset record, not the model's signature:
                warnings.filterwarnings("ignore", message=".*interpreted in multiple ways.*")
                warnings.filterwarnings("ignore", message=".*schema contains integer column.*")
                dataset = from_pandas(
                    frames[name],
                    source=str(source),
                    targets=spec.target.column,
                    name=f"{spec.key}-{name}",
                )
                mlflow.log_input(dataset, context=context)
        mlflow.log_text(card, "model_card.md")
        log_reference(spec, root)
        info = mlflow.onnx.log_model(
            graph,
            name="model",
            registered_model_name=spec.key,
            signature=infer_signature(example, outputs),
            input_example=example,
            save_as_external_data=False,
            pip_requirements=SERVING_REQUIREMENTS,
            extra_files=[str(p) for p in served_files(spec, root)] or None,
            onnx_execution_providers=["CPUExecutionProvider"],
        )
    return run.info.run_id, str(info.registered_model_version)


def register(spec: ModelSpec, root: Path) -> dict[str, Any]:
    """Check inputs, gate against the champion, log the run, then label the new version."""
    graph, metrics, train, test = load_inputs(spec, root)
    production, holdout = snapshot.training_rows(spec, root), snapshot.holdout(spec, root)
    client = registry.client()
    # the graph as served (a transformer's behind its tokenizer) scores the production window
    candidate = open_session(graph, spec, root) if len(holdout) else None
    alias, reason, window, compared = registry.gate(client, spec, metrics, test, candidate, holdout)
    canary = alias == registry.CHAMPION and spec.production.rollout == "canary"
    if canary and registry.champion_version(client, spec.key) is not None:
        alias, reason = registry.CHALLENGER, f"{reason}; to be rolled out as a canary"
    else:
        canary = False
    meta = {p.key: p.value for p in graph.metadata_props}
    segments = json.loads(meta["segments"]) if "segments" in meta else None
    served = precision(spec, root)
    card = model_card.render(
        spec, metrics, train, test, f"Gate: **{alias}**: {reason}.", segments, served
    )
    tags = lineage(spec.key, root) | {
        "gate.alias": alias,
        "gate.reason": reason,
        "precision": served,
    }
    if spec.features:  # the feature set the model was trained on (Feast's own tag names)
        tags |= {
            "feast.feature_service": spec.features.service,
            "feast.entity": spec.features.entity,
        }
    frames = {"train": train, "test": test, "production": production, "holdout": holdout}
    logged = metrics | {f"production_window.{k}": v for k, v in window.items()}
    run_id, version = log_run(spec, root, graph, logged, frames, tags, card)
    client.update_registered_model(spec.key, description=spec.description)
    client.update_model_version(spec.key, version, description=card)
    # Servers check the bytes they download (or kept from an earlier start) against this.
    tags["onnx_sha256"] = hashlib.sha256(graph.SerializeToString()).hexdigest()
    for path in served_files(spec, root):  # the files served with the graph, by name
        tags[f"{FILE_TAG_PREFIX}{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    files = [t for t in tags if t.startswith(FILE_TAG_PREFIX)]
    version_tags = ("gate.alias", "gate.reason", "git_commit", "onnx_sha256", "precision")
    for tag in (*version_tags, *FEAST_TAGS, *files):
        if tag in tags:
            client.set_model_version_tag(spec.key, version, tag, tags[tag])
    client.set_registered_model_alias(spec.key, alias, version)
    log.info("%s: version %s -> @%s (%s)", spec.key, version, alias, reason)
    return {
        "model": spec.key,
        "version": version,
        "alias": alias,
        "reason": reason,
        "run_id": run_id,
        "precision": served,  # the graph registered: fp32, or int8 where export shipped it
        "metrics": metrics,
        "production_window": {
            "records": len(holdout),
            "metrics": window,  # the candidate's
            "champion": None if compared is None else compared.champion,  # its gate metric
        },
        "production_rows": len(production),
        "canary": canary,  # passed the gate, @challenger until its canary decides
    }


def main_work(spec: ModelSpec, root: Path) -> None:
    record = register(spec, root)
    target = paths.registry_record(spec.key, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    run_stage("register", main_work, argv)


if __name__ == "__main__":
    main()
