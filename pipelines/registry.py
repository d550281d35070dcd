"""MLflow: tracking set-up, the quality gate, and what the registry holds."""

from dataclasses import dataclass
from typing import Any

import mlflow
import onnxruntime as ort
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from contract.catalog import ModelSpec
from contract.settings import get_settings
from contract.tokens import TokenizedSession, tokenized
from pipelines.export import Session, scored
from pipelines.log import get_logger
from pipelines.metrics import floors_met, not_worse

log = get_logger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"


def client() -> MlflowClient:
    settings = get_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient()


def experiment(key: str) -> str:
    """The model's experiment (same name as the model), created with our artifact root."""
    found = mlflow.get_experiment_by_name(key)
    if found is not None:
        return str(found.experiment_id)
    return str(
        mlflow.create_experiment(key, artifact_location=f"{get_settings().artifact_root}/{key}")
    )


def champion_version(mlflow_client: MlflowClient, key: str) -> str | None:
    try:
        return str(mlflow_client.get_model_version_by_alias(key, CHAMPION).version)
    except MlflowException:
        return None


def version_session(spec: ModelSpec, version: str) -> Any:
    """A registered version's graph, behind its tokenizer where it takes token ids (a
    fine-tuned transformer's: contract/tokens.py), so that it scores the test split's rows."""
    graph = mlflow.onnx.load_model(f"models:/{spec.key}/{version}")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return TokenizedSession(session) if tokenized(session) else session


SCORING_ERRORS = (
    KeyError,
    ValueError,
    RuntimeError,
    MlflowException,
    ort.capi.onnxruntime_pybind11_state.Fail,
)
# Native predictions (a task's NATIVE) no graph alone gives, and why the champion's logged
# metric compares instead
LOGGED_ONLY = {
    "embeddings": "its own corpus",  # a search: recall against exact search of its index
    "transcripts": "its graph is the front end, its decoder is served beside it",
}


def champion_metric(
    mlflow_client: MlflowClient, spec: ModelSpec, version: str, test: pd.DataFrame
) -> tuple[float, str]:
    """The champion re-scored on this test split; its logged metric if its graph cannot be.

    A search index is judged on its own corpus (recall against exact search of it), which
    is not this version's, and a speech recogniser's graph is its front end alone: the
    champion's logged metric is what compares (LOGGED_ONLY)."""
    why = LOGGED_ONLY.get(spec.task_kind.NATIVE)
    if why:  # no score from its graph's outputs alone
        return _logged(mlflow_client, spec, version), f"its logged metric ({why})"
    try:
        metrics = scored(version_session(spec, version), test, spec)
        return metrics[spec.gate_metric], "re-scored on the same test split"
    except SCORING_ERRORS as exc:
        log.warning(
            "champion v%s cannot score this test split (%s); using its logged metric", version, exc
        )
        return _logged(mlflow_client, spec, version), "its logged metric (inputs changed)"


def _logged(mlflow_client: MlflowClient, spec: ModelSpec, version: str) -> float:
    run = mlflow_client.get_run(str(mlflow_client.get_model_version(spec.key, version).run_id))
    return float(run.data.metrics[spec.gate_metric])


@dataclass(frozen=True)
class Window:
    """The gate metric of candidate and champion on the snapshot's held-out production
    records (pipelines/snapshot.py): the world as it is now, which the test split is not."""

    records: int
    candidate: float
    champion: float


def within(spec: ModelSpec, new: float, incumbent: float, margin: float) -> bool:
    """`new` not worse than `incumbent` by more than `margin`."""
    return new >= incumbent - margin if spec.higher_is_better else new <= incumbent + margin


def decide(
    spec: ModelSpec,
    metrics: dict[str, float],
    incumbent: float | None,
    production: Window | None = None,
) -> tuple[str, str]:
    """(alias, reason): champion only if every floor holds and the gate metric is not worse
    than the champion's: on the production window where there is one (and on the test
    split within `production.test_margin`), else on the test split."""
    missed = [
        f"{k} {metrics[k]:.4f} not {spec.floors[k]}"
        for k, ok in floors_met(spec, metrics).items()
        if not ok
    ]
    if missed:
        return CHALLENGER, "floor missed: " + "; ".join(missed)
    name, new = spec.gate_metric, metrics[spec.gate_metric]
    if incumbent is None:
        return CHAMPION, f"floors met; {name} {new:.4f}; no champion before"
    if production is not None:
        window = (
            f"{name} {production.candidate:.4f} on the production window "
            f"({production.records} records) against the champion's {production.champion:.4f}"
        )
        if not not_worse(spec, production.candidate, production.champion):
            return CHALLENGER, f"worse: {window}"
        margin = spec.production.test_margin
        split = f"{name} {new:.4f} on the test split against {incumbent:.4f} (margin {margin:g})"
        if not within(spec, new, incumbent, margin):
            return CHALLENGER, f"{window}, but {split}"
        return CHAMPION, f"floors met; {window}; {split}"
    if not not_worse(spec, new, incumbent):
        return CHALLENGER, f"{name} {new:.4f} worse than champion's {incumbent:.4f}"
    return CHAMPION, f"floors met; {name} {new:.4f} not worse than champion's {incumbent:.4f}"


def production_window(
    spec: ModelSpec, candidate: Session, version: str, holdout: pd.DataFrame
) -> tuple[Window | None, dict[str, float]]:
    """(the window's comparison, the candidate's metrics on it) where the snapshot holds
    at least `production.min_holdout` records and the champion's graph scores them."""
    if len(holdout) < spec.production.min_holdout:
        return None, {}
    ours = scored(candidate, holdout, spec)
    try:
        theirs = scored(version_session(spec, version), holdout, spec)
    except SCORING_ERRORS as exc:
        log.warning("champion v%s cannot score the production window (%s)", version, exc)
        return None, ours
    window = Window(len(holdout), ours[spec.gate_metric], theirs[spec.gate_metric])
    return window, ours


def gate(
    client: MlflowClient,
    spec: ModelSpec,
    metrics: dict[str, float],
    test: pd.DataFrame,
    candidate: Session | None = None,
    holdout: pd.DataFrame | None = None,
) -> tuple[str, str, dict[str, float], Window | None]:
    """(alias, reason, the candidate's metrics on the production window, the comparison
    there) for a new version, against the current champion if there is one."""
    incumbent_version = champion_version(client, spec.key)
    if incumbent_version is None:
        alias, reason = decide(spec, metrics, None)
        window_metrics = {}
        if candidate is not None and holdout is not None and len(holdout):
            window_metrics = scored(candidate, holdout, spec)
        return alias, reason, window_metrics, None
    incumbent, basis = champion_metric(client, spec, incumbent_version, test)
    window, window_metrics = None, {}
    if candidate is not None and holdout is not None:
        window, window_metrics = production_window(spec, candidate, incumbent_version, holdout)
    alias, reason = decide(spec, metrics, incumbent, window)
    return alias, f"{reason} (champion v{incumbent_version}, {basis})", window_metrics, window


def summary(keys: list[str]) -> list[dict[str, object]]:
    """Per registered model: versions, aliases and the champion's metrics."""
    mlflow_client, rows = client(), []
    for key in keys:
        try:
            model = mlflow_client.get_registered_model(key)
        except MlflowException:
            rows.append({"model": key, "versions": 0, "aliases": {}, "metrics": {}})
            continue
        versions = mlflow_client.search_model_versions(f"name='{key}'")
        champion = model.aliases.get(CHAMPION)
        run_ids = {str(v.version): str(v.run_id) for v in versions}
        metrics = mlflow_client.get_run(run_ids[str(champion)]).data.metrics if champion else {}
        rows.append(
            {
                "model": key,
                "versions": len(versions),
                "aliases": dict(model.aliases),
                "metrics": dict(metrics),
            }
        )
    return rows
