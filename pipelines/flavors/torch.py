"""PyTorch image classifiers through the stages: uint8 pixels in, normalisation and softmax
inside the graph. The estimator (pipelines/estimators/image_classifier.py) holds the
network and its training recipe; this flavor fixes the threads and deterministic kernels
it trains and scores with, saves the weights and exports the graph."""

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from contract import paths
from contract.catalog import ModelSpec
from contract.feeds import tensor
from pipelines.log import get_logger
from pipelines.schema import encode_target

log = get_logger(__name__)
WEIGHTS_FILE = "model.pt"  # tensors only: loaded with weights_only=True
# Intra-op threads for fitting and scoring when the catalog's params name none (`threads`)
THREADS = 1


def _image_field(spec: ModelSpec) -> str:
    (name,) = (n for n, f in spec.fields.items() if f.type == "image")
    return name


def _pixels(frame: pd.DataFrame, spec: ModelSpec) -> torch.Tensor:
    name = _image_field(spec)
    return torch.from_numpy(tensor(spec.fields[name], frame[name].tolist(), len(frame)).copy())


def _threads(p: dict[str, Any]) -> int:
    """The catalog's thread count, never the machine's: it is part of the arithmetic.

    MKL's GEMM (the dense layers) and oneDNN's convolution weight gradients split their sums
    by thread, so 1 and 2 threads give weights that differ after the first step: with all
    cores (the earlier TRAIN_THREADS=0) the weights depended on the machine's core count.
    """
    return int(p.get("threads", THREADS))


def fit(estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> nn.Module:
    """Same seed, same thread count, same CPU kernels (ISA) -> the same weights, bit for bit."""
    threads = _threads(spec.params)
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)  # an op with no deterministic kernel raises
    try:
        return _fit(estimator, train, spec, out)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])


def _fit(estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> nn.Module:
    pixels, labels = _pixels(train, spec), torch.tensor(encode_target(train, spec))
    model: nn.Module
    model, history = estimator.fit(pixels, labels, spec.key)
    out.mkdir(parents=True, exist_ok=True)
    (out / paths.HISTORY_NAME).write_text(json.dumps(history, indent=1))
    return model


def predict(model: nn.Module, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    model.eval()
    pixels = _pixels(frame, spec)
    before = torch.get_num_threads()
    torch.set_num_threads(_threads(spec.params))  # the dense layers' sums split by thread
    try:
        with torch.no_grad():
            parts = [model(pixels[i : i + 2000])[1] for i in range(0, len(pixels), 2000)]
    finally:
        torch.set_num_threads(before)
    return torch.cat(parts).double().numpy()


def save(model: nn.Module, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)


def load(directory: Path, spec: ModelSpec) -> nn.Module:
    from pipelines.models import get_project  # the catalog module knows the architecture

    state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    restored: nn.Module = get_project(spec.key).build(spec).restore(state)
    return restored


def to_onnx(model: nn.Module, spec: ModelSpec) -> onnx.ModelProto:
    name = _image_field(spec)
    height, width = spec.fields[name].shape or []
    sample = torch.zeros((2, height, width), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model.eval(),
            (sample,),
            path,
            input_names=[name],
            output_names=["label", "probabilities"],
            opset_version=18,
            dynamic_axes={name: {0: "batch"}, "label": {0: "batch"}, "probabilities": {0: "batch"}},
            dynamo=False,
        )
        return onnx.load_model(path)


def explain(model: nn.Module, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    return None  # the learning curve is this flavor's plot
