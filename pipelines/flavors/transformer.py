"""Fine-tuned transformers through the stages: text in, token ids and mask into the graph.

The estimator (pipelines/estimators/text_transformer.py) holds the encoder, its head and its
training recipe; its fitted module carries its tokenizer (`tokens`, `max_tokens`) and names
its graph outputs (`OUTPUTS`). Fitting, saving and loading are the torch flavor's (the same threads,
deterministic kernels and weights-only state). What differs is the graph's input: ONNX has
no WordPiece tokenizer, so the graph takes token ids and their mask and carries the
tokenizer in its metadata, and the service and export's checks put it before the graph
(contract/tokens.py `TokenizedSession`). The native prediction batches the texts as that
session does, so export's parity check compares like with like.
"""

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch

from contract.catalog import ModelSpec
from contract.tokens import TOKEN_INPUTS, batched, tokenizer
from pipelines.flavors.torch import explain, fit, load, report, save

__all__ = ["explain", "fit", "load", "outputs", "predict", "report", "save", "to_onnx"]
OPSET = 17


def _texts(frame: pd.DataFrame, spec: ModelSpec) -> list[str]:
    (name,) = spec.fields
    return ["" if v is None or v != v else str(v) for v in frame[name].tolist()]


def outputs(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The module's outputs by graph output name (its OUTPUTS), on the texts' tokens batched
    as the served graph's are, at the catalog's threads (the dense layers' sums split by
    thread)."""
    tok = tokenizer(model.tokens, model.max_tokens)
    before = torch.get_num_threads()
    torch.set_num_threads(int(spec.params.get("threads", 1)))
    model.eval()
    try:
        with torch.no_grad():
            found = batched(
                tok, _texts(frame, spec), lambda b: [t.numpy() for t in model(*_tensors(b))]
            )
    finally:
        torch.set_num_threads(before)
    return dict(zip(model.OUTPUTS, found, strict=True))


def _tensors(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(feeds[n]) for n in TOKEN_INPUTS]


def predict(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The task's native prediction (`native`) from the module's outputs."""
    wanted = spec.task_kind.JUDGED_OUTPUTS
    result = outputs(model, frame, spec)
    return spec.task_kind.native({o: result[o] for o in wanted}, frame, spec)


def to_onnx(model: Any, spec: ModelSpec) -> onnx.ModelProto:
    """The encoder, pooling, head and projection as one graph; its metadata carries the
    tokenizer and its limit (the text field's name is export's `fields`)."""
    tok = tokenizer(model.tokens, model.max_tokens)
    sample = tok.encode_batch(["a sample sentence", "two"])
    ids = torch.tensor([e.ids for e in sample], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in sample], dtype=torch.int64)
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in TOKEN_INPUTS}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(  # the TorchScript exporter: one self-contained file
            model.eval(),
            (ids, mask),
            str(path),
            input_names=list(TOKEN_INPUTS),
            output_names=list(model.OUTPUTS),
            dynamic_axes=axes | {o: {0: "batch"} for o in model.OUTPUTS},
            opset_version=OPSET,
            dynamo=False,
        )
        graph = onnx.load_model(path)
    meta = {"tokenizer": model.tokens, "max_tokens": str(model.max_tokens)}
    onnx.helper.set_model_props(graph, meta)
    return graph
