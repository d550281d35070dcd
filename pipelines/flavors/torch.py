"""PyTorch models through the stages: pixels or sensor series in, the whole inference
pipeline (normalisation, the network, softmax, a detector's decoding and NMS) inside the graph.

The estimator (pipelines/estimators/: image_classifier, segmenter, detector,
series_classifier) holds the network and its training recipe, and its fitted module names its
graph outputs (`OUTPUTS`). This flavor fixes the threads and deterministic kernels it trains
and scores with, hands it the pictures (or the stacked series) and the task's encoded target,
saves the weights and exports the graph. The
native prediction is read from the module's outputs on the same tensors ONNX Runtime gets
(contract/feeds.py) by the same function (the task's `native`), so export's parity check
compares like with like."""

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from contract import paths
from contract.catalog import ModelSpec
from contract.feeds import decode_photo, input_names, one_at_a_time, onnx_feeds, tensor
from pipelines.log import get_logger
from pipelines.schema import encode_target

log = get_logger(__name__)
WEIGHTS_FILE = "model.pt"  # tensors only: loaded with weights_only=True
# Intra-op threads for fitting and scoring when the catalog's params name none (`threads`)
THREADS = 1


# Input values (pixels, series steps) a scoring run takes at once (bounds the memory of a
# batch's activations)
CHUNK_VALUES = 2_000 * 28 * 28


def _image_field(spec: ModelSpec) -> str | None:
    """The model's picture field; None for a model of series or of one text."""
    found = [n for n, f in spec.fields.items() if f.type in ("image", "photo")]
    kinds = {f.type for f in spec.fields.values()}
    if not found and kinds != {"series"} and (kinds != {"text"} or len(spec.fields) > 1):
        raise ValueError(f"{spec.key}: a torch model reads one picture, one text or series")
    return found[0] if found else None


def _inputs(frame: pd.DataFrame, spec: ModelSpec) -> Any:
    """What the estimator trains on: grey pixels uint8 [N, H, W] of a fixed-size image
    field, a photo field's decoded RGB pictures [H, W, 3] (sizes differ), the series fields
    stacked as float signals [N, C, L] (one channel per field, in catalog order), or the
    texts of a text field."""
    name = _image_field(spec)
    if name is None:
        feeds = onnx_feeds(frame, spec)
        if len(spec.fields) == 1 and next(iter(spec.fields.values())).type == "text":
            return feeds[next(iter(spec.fields))].reshape(-1).tolist()
        return torch.from_numpy(np.stack([feeds[n] for n in spec.fields], axis=1))
    values = frame[name].tolist()
    if spec.fields[name].type == "photo":
        return [decode_photo(v) for v in values]
    return torch.from_numpy(tensor(spec.fields[name], values, len(frame)).copy())


def _target(frame: pd.DataFrame, spec: ModelSpec) -> Any:
    """The task's encoded target: class indices or masks as a tensor, boxes as a list."""
    encoded = encode_target(frame, spec)
    return list(encoded) if encoded.dtype == object else torch.from_numpy(encoded.copy())


def _threads(p: dict[str, Any]) -> int:
    """The catalog's thread count, never the machine's: it is part of the arithmetic.

    MKL's GEMM (the dense layers) and oneDNN's convolution weight gradients split their sums
    by thread, so 1 and 2 threads give weights that differ after the first step: with all
    cores (the earlier TRAIN_THREADS=0) the weights depended on the machine's core count.
    """
    return int(p.get("threads", THREADS))


def seeded_split(
    rows: int, p: dict[str, Any], net: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation, fit) row indices for an estimator's fit, drawn from the params' `seed`
    with their own generator (`validation_size` rows held out). The global seed is set
    first, for the initial weights and dropout's masks (serial draws): a network built after
    this call is drawn from it, and `net`, built before, has its weights drawn again now, so
    the weights never depend on what was constructed earlier in the process."""
    torch.manual_seed(p["seed"])
    for layer in net.modules() if net is not None else ():
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(p["seed"]))
    return order[: p["validation_size"]], order[p["validation_size"] :]


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A batch of pictures [N, C, H, W] in channels-last memory order, as a network inside
    `channels_last_training` trains on it: oneDNN's convolutions
    then run on NHWC without reordering every activation and gradient (a training step at
    2 threads on a 2.1 GHz Xeon: the CNN's 3-29% shorter, the U-Net's 14-28%, the
    detector's 11-43%, a noisy machine). Only the memory layout changes: the values, the
    saved weights and the exported graph are the same tensors."""
    return x.contiguous(memory_format=torch.channels_last)


@contextmanager
def channels_last_training(net: nn.Module) -> Iterator[nn.Module]:
    """`net`'s weights in channels_last while the block trains it on `channels_last`
    batches, back in contiguous order after it, error or not (the layout restored weights
    have, so the threshold, the projection and the saved weights see that). The optimizer's
    references stay valid: the parameters are the same objects."""
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # at run time Module.to takes it
    try:
        yield net
    finally:
        net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


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
    model: nn.Module
    model, history = estimator.fit(_inputs(train, spec), _target(train, spec), spec.key)
    out.mkdir(parents=True, exist_ok=True)
    (out / paths.HISTORY_NAME).write_text(json.dumps(history, indent=1))
    return model


def _rows_per_run(spec: ModelSpec) -> int:
    """A photo one at a time, as it is served (a batch pads each picture to the largest,
    which the network's borders see); fixed-size images and series in chunks of CHUNK_VALUES."""
    if one_at_a_time(spec):
        return 1
    values = sum(int(np.prod(f.shape or [1])) for f in spec.fields.values())
    return max(1, CHUNK_VALUES // values)


def outputs(model: nn.Module, frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The module's outputs by graph output name, on the tensors the graph is fed."""
    model.eval()
    names, step = input_names(spec), _rows_per_run(spec)
    parts: list[dict[str, np.ndarray]] = []
    before = torch.get_num_threads()
    torch.set_num_threads(_threads(spec.params))  # the dense layers' sums split by thread
    try:
        with torch.no_grad():
            for start in range(0, len(frame), step):
                feeds = onnx_feeds(frame.iloc[start : start + step], spec)  # photos: one each
                tensors = (torch.from_numpy(np.require(feeds[n], requirements="W")) for n in names)
                result = model(*tensors)  # np.require: a copy of read-only arrays only
                parts.append({o: r.numpy() for o, r in zip(_outputs(model), result, strict=True)})
    finally:
        torch.set_num_threads(before)
    return {o: np.concatenate([p[o] for p in parts]) for o in _outputs(model)}


def _outputs(model: nn.Module) -> list[str]:
    """The graph's output names, in forward's order (the fitted module's OUTPUTS)."""
    names: tuple[str, ...] = model.OUTPUTS  # type: ignore[assignment]
    return list(names)


def predict(model: nn.Module, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The task's native prediction (`native`) from the module's outputs."""
    wanted = spec.task_kind.JUDGED_OUTPUTS
    result = outputs(model, frame, spec)
    return spec.task_kind.native({o: result[o] for o in wanted}, frame, spec)


def save(model: nn.Module, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)


def load(directory: Path, spec: ModelSpec) -> nn.Module:
    from pipelines.models import get_project  # the catalog module knows the architecture

    state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    restored: nn.Module = get_project(spec.key).build(spec).restore(state)
    return restored


def _sample(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, str]]]:
    """(inputs to trace the graph with, their dynamic axes): a batch of two, and for a
    photo any height and width (traced at 128x96: big enough for a detector's top-k)."""
    name = _image_field(spec)
    if name is None:  # series: float32 [N, length] each
        fields = spec.fields.items()
        sample = {n: torch.zeros((2, *(f.shape or [])), dtype=torch.float32) for n, f in fields}
        return sample, {n: {0: "batch"} for n in sample}
    field = spec.fields[name]
    if field.type == "photo":
        sizes = torch.tensor([[128, 96], [100, 80]], dtype=torch.int64)
        sample = {name: torch.zeros((2, 128, 96, 3), dtype=torch.uint8), name + "_size": sizes}
        return sample, {name: {0: "batch", 1: "height", 2: "width"}, name + "_size": {0: "batch"}}
    height, width = field.shape or []
    return {name: torch.zeros((2, height, width), dtype=torch.uint8)}, {name: {0: "batch"}}


def to_onnx(model: nn.Module, spec: ModelSpec) -> onnx.ModelProto:
    sample, axes = _sample(spec)
    register = getattr(model, "register_onnx_ops", None)  # a detector's NMS
    if callable(register):
        register()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model.eval(),
            tuple(sample[n] for n in input_names(spec)),
            path,
            input_names=input_names(spec),
            output_names=_outputs(model),
            opset_version=18,
            dynamic_axes=axes | {o: {0: "batch"} for o in _outputs(model)},
            dynamo=False,
        )
        return onnx.load_model(path)


SHOWN = 6  # test pictures the plots draw (a detector's first, a segmentation's masks)


def report(
    model: nn.Module, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, measures): the first test pictures, decoded, for the task's plots (none
    for a series model)."""
    name = _image_field(spec)
    if name is None:
        return {}, {}
    field, values = spec.fields[name], test[name].head(SHOWN).tolist()
    if field.type == "photo":
        pictures = [decode_photo(v) for v in values]
    else:
        pictures = list(tensor(field, values, len(values)))
    return {"pictures": pictures}, {}


def explain(model: nn.Module, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    return None  # the learning curve is this flavor's plot
