"""PyTorch image classifiers: uint8 pixels in, normalisation and softmax inside the graph."""

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from contract import paths
from contract.catalog import ModelSpec
from contract.settings import get_settings
from pipelines.log import get_logger
from pipelines.schema import encode_target, images

log = get_logger(__name__)
WEIGHTS_FILE = "model.pt"  # tensors only: loaded with weights_only=True


class PixelsIn(nn.Module):
    """The whole inference pipeline: raw uint8 [N, H, W] -> (label, probabilities)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels.float() / 255.0 - self.mean) / self.std).unsqueeze(1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = F.softmax(self.net(self.normalise(pixels)), dim=1)
        return probabilities.argmax(dim=1), probabilities


def _image_field(spec: ModelSpec) -> str:
    (name,) = (n for n, f in spec.fields.items() if f.type == "image")
    return name


def _pixels(frame: pd.DataFrame, spec: ModelSpec) -> torch.Tensor:
    name = _image_field(spec)
    return torch.from_numpy(images(frame, name, spec.fields[name]).copy())


def _augment(x: torch.Tensor, generator: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
    """Horizontal flips per image and a small translation per batch (garments are symmetric)."""
    flip = torch.rand(len(x), generator=generator) < p["flip_prob"]
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    shift = p["max_shift"]
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    return torch.roll(x, (dy, dx), (2, 3))


def _evaluate(model: PixelsIn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model.net(x[i : i + 2000]) for i in range(0, len(x), 2000)])
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def fit(estimator: nn.Module, train: pd.DataFrame, spec: ModelSpec, out: Path) -> PixelsIn:
    p = spec.params
    torch.manual_seed(p["seed"])
    for layer in estimator.modules():  # initial weights drawn now, after seeding, not at build()
        reset = getattr(layer, "reset_parameters", None)
        if callable(reset):
            reset()
    threads = get_settings().train_threads
    if threads:
        torch.set_num_threads(threads)
    pixels, labels = _pixels(train, spec), torch.tensor(encode_target(train, spec))
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(p["seed"]))
    val_idx, fit_idx = order[: p["validation_size"]], order[p["validation_size"] :]
    mean = float(pixels[fit_idx].float().div(255).mean())
    std = float(pixels[fit_idx].float().div(255).std())
    model = PixelsIn(estimator, mean, std)
    x_fit, y_fit = model.normalise(pixels[fit_idx]), labels[fit_idx]
    x_val, y_val = model.normalise(pixels[val_idx]), labels[val_idx]
    history = _train_loop(model, x_fit, y_fit, x_val, y_val, p, spec.key)
    out.mkdir(parents=True, exist_ok=True)
    (out / paths.HISTORY_NAME).write_text(json.dumps(history, indent=1))
    return model


def _train_loop(
    model: PixelsIn,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    p: dict[str, Any],
    key: str,
) -> list[dict[str, float]]:
    batches = len(x) // p["batch_size"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=p["lr"], total_steps=p["epochs"] * batches
    )
    history, started = [], time.perf_counter()
    quarter = max(1, batches // 4)
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        generator = torch.Generator().manual_seed(p["seed"] + epoch)
        perm, seen, loss_sum, correct = torch.randperm(len(x), generator=generator), 0, 0.0, 0
        for i in range(batches):
            idx = perm[i * p["batch_size"] : (i + 1) * p["batch_size"]]
            xb, yb = _augment(x[idx], generator, p), y[idx]
            logits = model.net(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=p["label_smoothing"])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(idx), loss_sum + loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            if (i + 1) % quarter == 0 and (i + 1) // quarter < 4:
                log.info(
                    "%s epoch %d/%d: %d%% of batches, loss %.4f",
                    key,
                    epoch,
                    p["epochs"],
                    100 * (i + 1) // batches,
                    loss_sum / seen,
                )
        val_loss, val_acc = _evaluate(model, x_val, y_val)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
        log.info(
            "%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.0fs",
            key,
            epoch,
            p["epochs"],
            loss_sum / seen,
            correct / seen,
            val_loss,
            val_acc,
            time.perf_counter() - started,
        )
    return history


def predict(model: PixelsIn, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    model.eval()
    pixels = _pixels(frame, spec)
    with torch.no_grad():
        parts = [model(pixels[i : i + 2000])[1] for i in range(0, len(pixels), 2000)]
    return torch.cat(parts).double().numpy()


def save(model: PixelsIn, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)


def load(directory: Path, spec: ModelSpec) -> PixelsIn:
    from pipelines.models import get_project  # the catalog module knows the architecture

    state = torch.load(directory / WEIGHTS_FILE, weights_only=True)
    model = PixelsIn(get_project(spec.key).build(spec), float(state["mean"]), float(state["std"]))
    model.load_state_dict(state)
    return model.eval()


def to_onnx(model: PixelsIn, spec: ModelSpec) -> onnx.ModelProto:
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


def explain(model: PixelsIn, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    return None  # the learning curve is this flavor's plot
