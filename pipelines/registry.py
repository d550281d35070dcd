"""MLflow: tracking set-up, the quality gate, and what the registry holds."""

import mlflow
import onnxruntime as ort
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from contract.catalog import ModelSpec
from contract.settings import get_settings
from pipelines.export import onnx_embedding, onnx_predict
from pipelines.log import get_logger
from pipelines.metrics import floors_met, not_worse, score
from pipelines.schema import encode_target

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


def champion_metric(
    mlflow_client: MlflowClient, spec: ModelSpec, version: str, test: pd.DataFrame
) -> tuple[float, str]:
    """The champion re-scored on this test split; its logged metric if its graph cannot be.

    A search index is judged on its own corpus (recall against exact search of it), which
    is not this version's: the champion's logged metric is what compares."""
    if spec.task_kind.NATIVE == "embeddings":  # no score from its graph's outputs alone
        return _logged(mlflow_client, spec, version), "its logged metric (its own corpus)"
    try:
        graph = mlflow.onnx.load_model(f"models:/{spec.key}/{version}")
        session = ort.InferenceSession(
            graph.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        # a segmentation is judged in the space it clusters, which its graph outputs too
        clusters = spec.task_kind.NATIVE == "distances"
        embedding = onnx_embedding(session, test, spec) if clusters else None
        predicted = onnx_predict(session, test, spec)
        threshold = session.get_modelmeta().custom_metadata_map.get("threshold")
        threshold_value = None if threshold is None else float(threshold)
        metrics = score(spec, encode_target(test, spec), predicted, threshold_value, embedding)
        return metrics[spec.gate_metric], "re-scored on the same test split"
    except (
        KeyError,
        ValueError,
        RuntimeError,
        MlflowException,
        ort.capi.onnxruntime_pybind11_state.Fail,
    ) as exc:
        log.warning(
            "champion v%s cannot score this test split (%s); using its logged metric", version, exc
        )
        return _logged(mlflow_client, spec, version), "its logged metric (inputs changed)"


def _logged(mlflow_client: MlflowClient, spec: ModelSpec, version: str) -> float:
    run = mlflow_client.get_run(str(mlflow_client.get_model_version(spec.key, version).run_id))
    return float(run.data.metrics[spec.gate_metric])


def decide(spec: ModelSpec, metrics: dict[str, float], incumbent: float | None) -> tuple[str, str]:
    """(alias, reason): champion only if every floor holds and the gate metric is not worse."""
    missed = [
        f"{k} {metrics[k]:.4f} not {spec.floors[k]}"
        for k, ok in floors_met(spec, metrics).items()
        if not ok
    ]
    if missed:
        return CHALLENGER, "floor missed: " + "; ".join(missed)
    new = metrics[spec.gate_metric]
    if incumbent is not None:
        if not not_worse(spec, new, incumbent):
            return CHALLENGER, f"{spec.gate_metric} {new:.4f} worse than champion's {incumbent:.4f}"
        return (
            CHAMPION,
            f"floors met; {spec.gate_metric} {new:.4f} not worse than champion's {incumbent:.4f}",
        )
    return CHAMPION, f"floors met; {spec.gate_metric} {new:.4f}; no champion before"


def gate(
    client: MlflowClient, spec: ModelSpec, metrics: dict[str, float], test: pd.DataFrame
) -> tuple[str, str]:
    """(alias, reason) for a new version, against the current champion if there is one."""
    incumbent_version = champion_version(client, spec.key)
    if incumbent_version is None:
        return decide(spec, metrics, None)
    incumbent, basis = champion_metric(client, spec, incumbent_version, test)
    alias, reason = decide(spec, metrics, incumbent)
    return alias, f"{reason} (champion v{incumbent_version}, {basis})"


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
