"""INT8 graphs beside the FP32 one: ONNX Runtime's static quantization, calibrated on rows of
the train split (convolutional networks), or its dynamic quantization (transformers: int8
weights, each activation's range taken as it runs), shipped only where the gate metric stays
within `int8.max_drop` of FP32's.

    artifacts/<key>/int8/model.onnx     the quantized graph, when shipped (QDQ: int8 weights
                                        per output channel, uint8 activations, MinMax ranges)
    artifacts/<key>/int8/quantization.json
                                        both graphs' gate metric on the test split, the drop,
                                        their sizes, whether it shipped and why not, and
                                        every metric of the INT8 graph on the test split

A shipped INT8 graph is the one registered and served (contract/paths.py `served_model`):
the register stage logs it with its own metrics, which the floors and the gate judge.

Only the arithmetic-heavy operators (Conv, MatMul, Gemm) are quantized: the pre- and
post-processing inside the graph (normalisation, softmax, box decoding, NMS) stays float.
The export stage runs this for catalog entries with an `int8:` section (the vision models and
the fine-tuned transformer);
`make bench` (services/tools/bench/precision.py) measures what it costs and saves.
"""

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pandas as pd
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from contract import paths
from contract.catalog import ModelSpec
from contract.feeds import one_at_a_time, onnx_feeds
from pipelines.log import get_logger

log = get_logger(__name__)
FOLDER = paths.INT8_DIR
REPORT = "quantization.json"
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
DYNAMIC_OPS = ["MatMul", "Gemm"]


class Rows(CalibrationDataReader):  # type: ignore[misc]
    """The calibration rows' graph inputs: a batch at a time, photos one at a time."""

    def __init__(self, frame: pd.DataFrame, spec: ModelSpec, batch: int = 32) -> None:
        step = 1 if one_at_a_time(spec) else batch
        self.batches: Iterator[dict[str, Any]] = (
            onnx_feeds(frame.iloc[start : start + step], spec)
            for start in range(0, len(frame), step)
        )

    def get_next(self) -> dict[str, Any] | None:
        return next(self.batches, None)


def calibration_rows(train: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    assert spec.int8 is not None and spec.int8.calibration_rows is not None
    rows = min(spec.int8.calibration_rows, len(train))
    return train.sample(n=rows, random_state=spec.int8.seed)


def quantized(graph: onnx.ModelProto, spec: ModelSpec, train: pd.DataFrame) -> onnx.ModelProto:
    """The graph quantized to INT8 (static: calibrated on rows of `train`; dynamic: the
    weights, activations at run time), with the FP32 graph's metadata (and `precision:
    int8`, `quantization: <mode>`)."""
    assert spec.int8 is not None
    # reduce_range: 7-bit weights. ONNX Runtime multiplies uint8 activations by int8 weights
    # with AVX2's vpmaddubsw where a CPU lacks VNNI, whose int16 sums saturate on 8-bit
    # weights: on an AVX2-only AMD EPYC a small calibrated conv (outputs up to 1.05) was 0.28
    # off FP32, 0.013 with 7-bit weights. Served graphs run on CPUs of either kind.
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(graph, source)
        if spec.int8.mode == "dynamic":
            # MatMul and Gemm only (a transformer's dense layers): the graph's tokens-in
            # Gather (embeddings) and pooling stay float
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=DYNAMIC_OPS,
                per_channel=True,
                weight_type=QuantType.QInt8,
                reduce_range=True,
            )
        else:
            quantize_static(
                str(source),
                str(target),
                Rows(calibration_rows(train, spec), spec),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                reduce_range=True,
            )
        result = onnx.load_model(target)
    # quantization: static or dynamic (a served transformer reads each text alone where
    # dynamic: contract/tokens.py DYNAMIC)
    meta = {p.key: p.value for p in graph.metadata_props}
    meta |= {"precision": "int8", "quantization": spec.int8.mode}
    onnx.helper.set_model_props(result, meta)
    result.doc_string = graph.doc_string
    return result


def judge(
    spec: ModelSpec,
    fp32: float,
    int8: float,
    sizes: tuple[int, int],
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The report: shipped when INT8 loses at most `max_drop` of the gate metric
    (`metrics`: every metric of the INT8 graph on the test split, kept as `int8_metrics`)."""
    assert spec.int8 is not None
    drop = fp32 - int8 if spec.higher_is_better else int8 - fp32
    shipped = drop <= spec.int8.max_drop
    return {
        "metric": spec.gate_metric,
        "fp32": round(fp32, 6),
        "int8": round(int8, 6),
        "drop": round(drop, 6),
        "max_drop": spec.int8.max_drop,
        "fp32_bytes": sizes[0],
        "int8_bytes": sizes[1],
        "shipped": shipped,
        "why": "" if shipped else f"{spec.gate_metric} drops {drop:.4f} > {spec.int8.max_drop}",
        "int8_metrics": {k: round(float(v), 6) for k, v in (metrics or {}).items()},
    }
