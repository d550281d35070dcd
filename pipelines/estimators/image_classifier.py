"""Image classification: a network on normalised pixels and the recipe that trains it.

`ImageClassifier` is the unfitted estimator a catalog module builds (its network and the
entry's params); `fit` trains it on uint8 pixels [N, H, W] and returns `PixelsIn`, the
whole inference pipeline (normalisation, the network, softmax, and the picture's embedding
for the drift view: pipelines/estimators/embedding.py) that the torch flavor exports to
ONNX. Training is AdamW with a one-cycle schedule, label smoothing, horizontal
flips and small shifts; every draw comes from a seeded generator, so the same data, params
and thread count give the same weights (the torch flavor fixes the threads).
"""

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from contract.catalog import INPUT_EMBEDDING
from pipelines.flavors.embedding import Projection, fitted
from pipelines.flavors.torch import channels_last, channels_last_training, seeded_split
from pipelines.log import get_logger

log = get_logger(__name__)


class PixelsIn(nn.Module):
    """The whole inference pipeline: raw uint8 [N, H, W] -> (label, probabilities, the
    picture's embedding: its last hidden layer on the principal axes of the training
    pictures'). `net` is a Sequential whose last layer gives the class logits."""

    OUTPUTS = ("label", "probabilities", INPUT_EMBEDDING)  # the graph's, in forward's order
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Sequential, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        classifier = net[-1]
        assert isinstance(classifier, nn.Linear), "the network ends in its class logits"
        self.projection = Projection(classifier.in_features)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels.float() / 255.0 - self.mean) / self.std).unsqueeze(1)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer of normalised images [N, 1, H, W]."""
        out: torch.Tensor = self.net[:-1](x)
        return out

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.hidden(self.normalise(pixels))
        probabilities = F.softmax(self.net[-1](hidden), dim=1)
        return probabilities.argmax(dim=1), probabilities, self.projection(hidden)


@dataclass
class ImageClassifier:
    """The unfitted estimator: a network for [N, 1, H, W] normalised images (class logits
    out) and its training params (`seed`, `validation_size`, `epochs`, `batch_size`, `lr`,
    `weight_decay`, `label_smoothing`, `flip_prob`, `max_shift`)."""

    net: nn.Sequential
    params: dict[str, Any]

    def fit(
        self, pixels: torch.Tensor, labels: torch.Tensor, key: str
    ) -> tuple[PixelsIn, list[dict[str, float]]]:
        """(the fitted pipeline, its per-epoch history) on uint8 pixels [N, H, W]."""
        p = self.params
        val_idx, fit_idx = seeded_split(len(pixels), p, self.net)
        mean = float(pixels[fit_idx].float().div(255).mean())
        std = float(pixels[fit_idx].float().div(255).std())
        model = PixelsIn(self.net, mean, std)
        x_fit, y_fit = model.normalise(pixels[fit_idx]), labels[fit_idx]
        x_val, y_val = model.normalise(pixels[val_idx]), labels[val_idx]
        with channels_last_training(model.net):  # trains on channels_last batches
            history = _train_loop(model, x_fit, y_fit, x_val, y_val, p, key)
        fitted(model.projection, model.eval().hidden, x_fit)
        return model, history

    def restore(self, state: dict[str, torch.Tensor]) -> PixelsIn:
        """The fitted pipeline from its saved weights (normalisation included)."""
        model = PixelsIn(self.net, float(state["mean"]), float(state["std"]))
        model.load_state_dict(state)
        return model.eval()


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
            xb, yb = channels_last(_augment(x[idx], generator, p)), y[idx]
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
