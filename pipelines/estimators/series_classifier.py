"""Series classification: a 1-D network on a window of sensor signals and its training recipe.

`SeriesClassifier` is the unfitted estimator a catalog module builds (its network and the
entry's params); `fit` trains it on float signals [N, C, L] (one channel per series field,
in the catalog's order) and returns `SignalsIn`, the whole inference pipeline that the torch
flavor exports to ONNX: the raw series fields in, each [N, L], stacked, standardised per
channel with the training windows' statistics, the network, softmax. A window is an
arbitrary cut of a continuing activity and the wrist's strength varies, so training shifts
each window circularly in time and scales each channel a little; every draw comes from a
seeded generator (the torch flavor fixes the threads), so the same data, params and thread
count give the same weights.
"""

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipelines.flavors.torch import seeded_split
from pipelines.log import get_logger

log = get_logger(__name__)


class SignalsIn(nn.Module):
    """The whole inference pipeline: C raw series [N, L] -> (label, probabilities)."""

    OUTPUTS = ("label", "probabilities")  # the graph's, in forward's order
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Sequential, channels: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def normalise(self, signals: torch.Tensor) -> torch.Tensor:
        """[N, C, L] standardised per channel."""
        return (signals - self.mean[None, :, None]) / self.std[None, :, None]

    def forward(self, *series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = F.softmax(self.net(self.normalise(torch.stack(series, dim=1))), dim=1)
        return probabilities.argmax(dim=1), probabilities


@dataclass
class SeriesClassifier:
    """The unfitted estimator: a network for standardised signals [N, C, L] (class logits
    out) and its training params (`seed`, `validation_size`, `epochs`, `batch_size`, `lr`,
    `weight_decay`, `label_smoothing`, `max_scale`)."""

    net: nn.Sequential
    params: dict[str, Any]

    def fit(
        self, signals: torch.Tensor, labels: torch.Tensor, key: str
    ) -> tuple[SignalsIn, list[dict[str, float]]]:
        """(the fitted pipeline, its per-epoch history) on float signals [N, C, L]."""
        p = self.params
        val_idx, fit_idx = seeded_split(len(signals), p, self.net)
        model = SignalsIn(self.net, signals.shape[1])
        model.mean.copy_(signals[fit_idx].mean(dim=(0, 2)))
        model.std.copy_(signals[fit_idx].std(dim=(0, 2)).clamp(min=1e-6))
        x_fit, y_fit = model.normalise(signals[fit_idx]), labels[fit_idx]
        x_val, y_val = model.normalise(signals[val_idx]), labels[val_idx]
        history = _train_loop(model.net, x_fit, y_fit, x_val, y_val, p, key)
        return model.eval(), history

    def restore(self, state: dict[str, torch.Tensor]) -> SignalsIn:
        """The fitted pipeline from its saved weights (the standardisation included)."""
        model = SignalsIn(self.net, len(state["mean"]))
        model.load_state_dict(state)
        return model.eval()


def _augment(x: torch.Tensor, generator: torch.Generator, p: dict[str, Any]) -> torch.Tensor:
    """Each window shifted circularly by a random number of steps, each of its channels
    scaled by a random factor within 1 +- max_scale."""
    size, channels, length = x.shape
    shifts = torch.randint(0, length, (size, 1, 1), generator=generator)
    steps = (torch.arange(length)[None, None, :] + shifts) % length
    shifted = x.gather(2, steps.expand(size, channels, length))
    noise = 2 * torch.rand(size, channels, 1, generator=generator) - 1
    scale: torch.Tensor = 1 + float(p["max_scale"]) * noise
    return shifted * scale


def _evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if not len(x):
        return {}
    net.eval()
    with torch.no_grad():
        logits = net(x)
    accuracy = float((logits.argmax(1) == y).float().mean())
    return {"val_loss": float(F.cross_entropy(logits, y)), "val_accuracy": accuracy}


def _train_loop(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    p: dict[str, Any],
    key: str,
) -> list[dict[str, float]]:
    batches = max(1, len(x) // p["batch_size"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=p["lr"], total_steps=p["epochs"] * batches
    )
    history, started = [], time.perf_counter()
    for epoch in range(1, p["epochs"] + 1):
        net.train()
        generator = torch.Generator().manual_seed(p["seed"] + epoch)
        perm, seen, loss_sum, correct = torch.randperm(len(x), generator=generator), 0, 0.0, 0
        for i in range(batches):
            idx = perm[i * p["batch_size"] : (i + 1) * p["batch_size"]]
            logits = net(_augment(x[idx], generator, p))
            loss = F.cross_entropy(logits, y[idx], label_smoothing=p["label_smoothing"])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(idx), loss_sum + loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen}
        history.append(row | _evaluate(net, x_val, y_val))
        if epoch % max(1, p["epochs"] // 10) == 0 or epoch == p["epochs"]:
            log.info(
                "%s epoch %d/%d: %s | %.1fs",
                key,
                epoch,
                p["epochs"],
                " ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "epoch"),
                time.perf_counter() - started,
            )
    return history
