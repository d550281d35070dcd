"""The whole pipeline on reduced params in a temporary copy, checked through the registry."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.exceptions import MlflowException

from contract import paths, reference
from contract.catalog import INPUT_EMBEDDING, embedded
from pipelines import quantize
from pipelines.models import get_project
from services.tools.examples import client_tokenizer
from tests.conftest import CATALOG, KEYS
from tests.workspace import Project

pytestmark = pytest.mark.slow

PLOTS = {  # by task, plus by flavor: what the model explains itself with
    "regression": {"residuals.png"},
    "binary": {"roc.png", "confusion.png"},
    "multiclass": {"confusion.png"},
    "anomaly": {"roc.png", "precision_recall.png", "scores.png", "confusion.png"},
    "clustering": {"segments_pca.png", "silhouette_by_k.png"},
    "recommendation": {"ratings.png", "ranking.png"},
    "forecast": {"forecast_week.png", "mape_by_month.png"},
    "retrieval": {"recall_by_nprobe.png", "similarity.png"},
    "detection": {"precision_recall.png", "detections.png"},
    "segmentation": {"class_iou.png", "masks.png"},
    "transcription": {"wer_by_recording.png", "confidence.png"},
    "pipelines.flavors.sklearn": {"importance.png"},
    "pipelines.flavors.torch": {"learning_curve.png"},
    "pipelines.flavors.transformer": {"learning_curve.png"},
    "pipelines.flavors.speech": set(),  # Whisper used as shipped: nothing fitted
    "pipelines.flavors.factors": set(),  # latent factors: no per-field importance
    "pipelines.flavors.retrieval": set(),  # an encoder used as shipped: nothing fitted
}


OUTPUTS = {  # the graph's outputs, by task (the served answer is built from them)
    "regression": {"prediction"},
    "binary": {"label", "probabilities"},
    "multiclass": {"label", "probabilities"},
    "anomaly": {"label", "score"},
    "clustering": {"label", "distances", "embedding"},
    "recommendation": {"items", "names", "scores", "fallback", "ratings", "baseline", "catalog"},
    "forecast": {"forecast"},
    # MLflow's ONNX model is the encoder alone: tokens in (the service tokenizes), and the
    # FAISS index and documents beside it as extra files
    "retrieval": {"embedding"},
    "detection": {"count", "boxes", "scores", "labels"},
    "segmentation": {"label", "areas", "probabilities"},
    # the front end alone (log-mel features); the decoder's files are registered beside it
    "transcription": {"features"},
}
TOKENS = ["input_ids", "attention_mask"]  # a transformer's graph: the service tokenizes
INPUTS = {"detection": ["image", "image_size"], "transcription": ["speech", "speech_size"]}


def versions(project: Project, key: str) -> list[str]:
    try:
        return sorted(
            str(v.version) for v in project.client().search_model_versions(f"name='{key}'")
        )
    except MlflowException:
        return []


@pytest.mark.parametrize("key", KEYS)
def test_every_model_is_registered_as_champion(project: Project, key: str) -> None:
    client, params = project.client(), project.params()["models"][key]
    version = client.get_model_version_by_alias(key, "champion")
    assert str(version.version) == "1"
    run = client.get_run(version.run_id)
    for metric, bound in params["floors"].items():
        value = run.data.metrics[metric]
        assert bound.get("min", -1e9) <= value <= bound.get("max", 1e9), (metric, value)
    head = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert run.data.tags["git_commit"] == head
    assert any(t.startswith("dvc.artifacts/") for t in run.data.tags)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {f"{key}-train", f"{key}-test"}
    assert "Model card" in version.description and "champion" in version.description


@pytest.mark.parametrize("key", KEYS)
def test_registered_model_has_signature_example_and_card(project: Project, key: str) -> None:
    import mlflow

    client = project.client()
    version = client.get_model_version_by_alias(key, "champion")
    mlflow.set_tracking_uri(project.tracking_uri)  # MLflow 3 resolves models:/ through both
    mlflow.set_registry_uri(project.tracking_uri)
    info = mlflow.models.get_model_info(f"models:/{key}@champion")
    task = project.params()["models"][key]["task"]
    tokens = client_tokenizer(project.root / "artifacts" / key / "model.onnx") is not None
    fields = TOKENS if tokens else INPUTS.get(task, list(project.params()["models"][key]["fields"]))
    assert [spec.name for spec in info.signature.inputs.inputs] == fields
    outputs = {spec.name for spec in info.signature.outputs.inputs}
    drift_view = any(embedded(f) for f in CATALOG[key].fields.values())  # pictures, texts
    assert outputs == OUTPUTS[task] | ({INPUT_EMBEDDING} if drift_view else set())
    assert info.saved_input_example_info is not None
    card = mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_card.md")
    assert "## Intended use" in card and "## Quality on the test split" in card


@pytest.mark.parametrize("key", KEYS)
def test_the_version_registered_is_the_graph_served(project: Project, key: str) -> None:
    """The INT8 graph where export shipped it (quantization.json), registered with the
    metrics export measured of it and the FP32 graph's beside them; else the FP32 graph."""
    version = project.client().get_model_version_by_alias(key, "champion")
    graph = paths.served_model(key, project.root)
    assert version.tags["onnx_sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
    report = paths.int8_model(key, project.root).parent / quantize.REPORT
    shipped = report.is_file() and json.loads(report.read_text())["shipped"]
    assert version.tags["precision"] == ("int8" if shipped else "fp32")
    assert (graph == paths.int8_model(key, project.root)) == shipped
    if shipped:
        quantized = json.loads(report.read_text())
        metrics = project.client().get_run(version.run_id).data.metrics
        gate = CATALOG[key].gate_metric
        assert metrics[gate] == pytest.approx(quantized["int8"], abs=1e-6)
        assert metrics[f"fp32.{gate}"] == pytest.approx(quantized["fp32"], abs=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_the_registered_drift_reference_is_the_one_export_made(
    project: Project, key: str, tmp_path: Path
) -> None:
    """Export makes the reference of the graph served (a cached stage), register logs it."""
    import mlflow

    version = project.client().get_model_version_by_alias(key, "champion")
    made = paths.reference_file(key, project.root)
    logged = mlflow.artifacts.download_artifacts(
        run_id=version.run_id,
        artifact_path=reference.ARTIFACT,
        dst_path=str(tmp_path),
        tracking_uri=project.tracking_uri,
    )
    assert Path(logged).read_bytes() == made.read_bytes()
    frame = pd.read_parquet(made)
    split = CATALOG[key].task_kind.REFERENCE_SPLIT
    rows = pq.read_metadata(paths.split_dir(key, project.root) / f"{split}.parquet").num_rows
    assert len(frame) == min(rows, reference.ROWS)
    assert reference.PREDICTION in frame.columns
    assert not frame[reference.PREDICTION].isna().any()


def test_second_repro_has_nothing_to_do(project: Project) -> None:
    result = project.run("dvc", "repro")
    assert "Data and pipelines are up to date" in result.stdout + result.stderr
    assert "Running stage" not in result.stdout


def test_metrics_and_plots_cover_every_model(project: Project) -> None:
    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert {f"reports/metrics/{k}.json" for k in KEYS} <= set(files)
    tasks = {k: m["task"] for k, m in project.params()["models"].items()}
    for key in KEYS:
        drawn = {p.name for p in (project.root / "reports" / "plots" / key).iterdir()}
        flavor = get_project(key).FLAVOR.__name__  # type: ignore[attr-defined]
        # a segmentation has no target to measure importance against: profiles explain it
        explained = PLOTS[flavor] if tasks[key] != "clustering" else set()
        assert PLOTS[tasks[key]] | explained <= drawn, key
    project.run("dvc", "plots", "show", "-o", "dvc_plots")
    html = (project.root / "dvc_plots" / "index.html").read_text()
    assert all(f"reports/plots/{k}" in html for k in KEYS)


def test_clean_rerun_gives_identical_metrics(project: Project) -> None:
    keys = ("house_prices", "fashion_cnn")  # one per flavor; --force reruns their upstream too

    def read() -> dict[str, bytes]:
        return {
            **{k: (project.root / f"reports/metrics/{k}.json").read_bytes() for k in keys},
            **{
                k + ".onnx": (project.root / f"artifacts/{k}/model.onnx").read_bytes() for k in keys
            },
            # the graph served: fashion_cnn's INT8 one where it ships (static quantization,
            # calibrated on seeded rows: the same bytes again)
            **{k + ".served": paths.served_model(k, project.root).read_bytes() for k in keys},
        }

    before = read()
    project.run(
        "dvc", "repro", "--force", *(f"{s}@{k}" for k in keys for s in ("evaluate", "export"))
    )
    assert read() == before


def test_worse_model_becomes_challenger(project: Project) -> None:
    champion = str(project.client().get_model_version_by_alias("titanic", "champion").version)
    saved = yaml.safe_dump(project.params(), sort_keys=False)
    project.edit_model("titanic", {"params": {"max_iter": 3, "learning_rate": 0.01}})
    try:
        project.run("dvc", "repro", "register@titanic")
    finally:  # the later tests (the loop demo's retraining) train on the entry as it was
        (project.root / "params.yaml").write_text(saved)
    client = project.client()
    challenger = client.get_model_version_by_alias("titanic", "challenger")
    assert str(challenger.version) != champion
    assert str(client.get_model_version_by_alias("titanic", "champion").version) == champion
    assert (
        "worse than champion" in challenger.tags["gate.reason"]
        or "floor missed" in challenger.tags["gate.reason"]
    )
    record = json.loads((project.root / "reports/registry/titanic.json").read_text())
    assert record["alias"] == "challenger"


@pytest.mark.parametrize(
    ("key", "overlay", "expected"),
    [
        ("churn", {"fields": {"tenure": {"max": 12}}}, "column 'tenure'"),
        ("review_sentiment", {"drop": []}, "column 'product'"),
        (
            "fashion_cnn",
            {"source": {"path": "/nonexistent"}},
            "apt-get install dataset-fashion-mnist",
        ),
    ],
)
def test_bad_input_fails_clearly_and_leaves_the_registry(
    project: Project, key: str, overlay: dict[str, object], expected: str
) -> None:
    saved = yaml.safe_dump(project.params(), sort_keys=False)
    before = versions(project, key)
    project.edit_model(key, overlay)
    try:
        result = project.run("dvc", "repro", f"register@{key}", check=False)
    finally:
        (project.root / "params.yaml").write_text(saved)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert versions(project, key) == before
