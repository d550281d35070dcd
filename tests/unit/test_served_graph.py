"""Which graph is registered and served: the INT8 one where the export stage shipped it,
registered with the metrics export measured of it, which the floors and the gate judge."""

import json
from pathlib import Path

import pandas as pd
import pytest

from contract import paths
from pipelines import model_card, quantize, register
from pipelines.cli import StageError
from tests.conftest import CATALOG

CNN = CATALOG["fashion_cnn"]  # int8: static, gate metric accuracy
NATIVE = {"accuracy": 0.9139, "log_loss": 0.25, "test_rows": 10000}


def exported(root: Path, key: str, int8_metrics: dict[str, float] | None) -> None:
    """An export's folder: the FP32 graph, and the INT8 report; the INT8 graph where it
    shipped (`int8_metrics` given)."""
    paths.onnx_model(key, root).parent.mkdir(parents=True)
    paths.onnx_model(key, root).write_bytes(b"fp32")
    folder = paths.int8_model(key, root).parent
    folder.mkdir()
    shipped = int8_metrics is not None
    report = quantize.judge(CATALOG[key], 0.9139, 0.9141 if shipped else 0.8, (4, 1), int8_metrics)
    (folder / quantize.REPORT).write_text(json.dumps(report))
    if shipped:
        paths.int8_model(key, root).write_bytes(b"int8")


def test_the_fp32_graph_is_served_where_no_int8_graph_shipped(tmp_path: Path) -> None:
    exported(tmp_path, CNN.key, None)
    assert paths.served_model(CNN.key, tmp_path) == paths.onnx_model(CNN.key, tmp_path)
    assert register.precision(CNN, tmp_path) == "fp32"
    assert register.served_metrics(CNN, tmp_path, NATIVE) == NATIVE


def test_a_shipped_int8_graph_is_served_with_its_own_metrics(tmp_path: Path) -> None:
    exported(tmp_path, CNN.key, {"accuracy": 0.9141, "log_loss": 0.26})
    assert (
        paths.served_model(CNN.key, tmp_path) == tmp_path / "artifacts/fashion_cnn/int8/model.onnx"
    )
    assert register.precision(CNN, tmp_path) == "int8"
    metrics = register.served_metrics(CNN, tmp_path, NATIVE)
    # the INT8 graph's are what the floors and the gate read; FP32's are kept beside them
    assert metrics == {
        "accuracy": 0.9141,
        "log_loss": 0.26,
        "test_rows": 10000,
        "fp32.accuracy": 0.9139,
        "fp32.log_loss": 0.25,
    }


def test_an_int8_report_without_its_metrics_stops_the_register_stage(tmp_path: Path) -> None:
    """A report of an older export (the gate metric alone) cannot stand for the graph."""
    exported(tmp_path, CNN.key, {"accuracy": 0.9141})
    report = paths.int8_model(CNN.key, tmp_path).parent / quantize.REPORT
    report.write_text(json.dumps({"metric": "accuracy", "shipped": True}))
    with pytest.raises(StageError, match="no INT8 metrics: run `dvc repro export@fashion_cnn`"):
        register.served_metrics(CNN, tmp_path, NATIVE)


def test_the_int8_report_keeps_every_metric_of_the_int8_graph() -> None:
    report = quantize.judge(CNN, 0.9139, 0.9141, (1000, 260), {"accuracy": 0.91412345, "f1": 0.9})
    assert report["shipped"] and report["int8_metrics"] == {"accuracy": 0.914123, "f1": 0.9}


def test_the_model_card_says_which_graph_is_served() -> None:
    frame = pd.DataFrame({CNN.target.column: CNN.class_names[:2]})
    card = model_card.render(
        CNN, NATIVE | {"fp32.accuracy": 0.9139}, frame, frame, "Gate", None, "int8"
    )
    assert "The graph served is INT8" in card and "fp32.accuracy 0.9139" in card
    assert "INT8" not in model_card.render(CNN, NATIVE, frame, frame, "Gate")
