"""Semantic segmentation: a U-Net on normalised pixels and the recipe that trains it.

`Segmenter` is the unfitted estimator (its class count and params); `fit` trains a `UNet` on
uint8 canvases [N, H, W] and their masks (0 background, c + 1 for class c) and returns
`MaskOut`, the whole inference pipeline (normalisation, the network, softmax, the per-pixel
class and the per-class areas) that exports to ONNX. The U-Net keeps a thin full-resolution
level for the masks' edges and puts its width at 1/8 scale, where a residual stack of
dilated convolutions sees a whole 28x28 item (and its neighbours), so a pixel's class is the
item's, not its texture's. Training is AdamW with a one-cycle schedule, per-pixel cross
entropy, horizontal flips per canvas and a small shift per batch; every draw comes from a
seeded generator, so the same data, params and thread count give the same weights.
"""

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.catalog import INPUT_EMBEDDING
from contract.tasks.segmentation import intersection_over_union
from pipelines.flavors.embedding import Projection, fitted
from pipelines.flavors.torch import channels_last, channels_last_training, seeded_split
from pipelines.log import get_logger

log = get_logger(__name__)


def _conv(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.conv = _conv(channels, channels, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.conv(x)
        return out


class UNet(nn.Module):
    """[N, 1, H, W] normalised pixels -> [N, classes, H, W] logits (H, W divisible by
    2**depth). Level 0 (full resolution) has `stem` channels, level i >= 1 has
    `width * 2**(i - 1)`; each encoder level is two 3x3 convolutions (after a 2x2 max pool),
    the bottleneck adds one residual 3x3 convolution per entry of `dilations`, and each
    decoder level is a 2x2 transposed convolution, the encoder's skip concatenated, and
    `decoder_convs` 3x3 convolutions; a 1x1 convolution gives the logits."""

    def __init__(
        self,
        classes: int,
        stem: int,
        width: int,
        depth: int,
        dilations: tuple[int, ...] = (),
        decoder_convs: int = 1,
    ) -> None:
        super().__init__()
        chans = [stem] + [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList([nn.Sequential(_conv(1, stem), _conv(stem, stem))])
        for c_in, c_out in itertools.pairwise(chans):
            self.down.append(
                nn.Sequential(nn.MaxPool2d(2), _conv(c_in, c_out), _conv(c_out, c_out))
            )
        self.bottleneck = nn.Sequential(*(_Residual(chans[-1], d) for d in dilations))
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_low, c_high in zip(chans[:0:-1], chans[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(c_low, c_high, 2, stride=2))
            convs = [_conv(2 * c_high, c_high)]
            convs += [_conv(c_high, c_high) for _ in range(decoder_convs - 1)]
            self.merge.append(nn.Sequential(*convs))
        self.head = nn.Conv2d(stem, classes, 1)

    @property
    def bottleneck_channels(self) -> int:
        last = self.up[0]
        assert isinstance(last, nn.ConvTranspose2d)
        return last.in_channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the bottleneck's map, the encoder's skips)."""
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
        return self.bottleneck(skips.pop()), skips

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        out: torch.Tensor = self.head(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck's map averaged over the picture [N, bottleneck_channels]."""
        return self.encode(x)[0].mean(dim=(2, 3))


class MaskOut(nn.Module):
    """The whole inference pipeline: raw uint8 [N, H, W] -> (mask uint8 [N, H, W] with 0 for
    background and c + 1 for class c, areas int64 [N, C + 1] pixels per class with the
    background first, probabilities float32 [N, C + 1, H, W], and the picture's embedding:
    its bottleneck averaged, on the training canvases' principal axes). With `flip`, the
    probabilities are the mean of the image's and its mirror image's (mirrored back)."""

    # the graph's outputs, in forward's order
    OUTPUTS = ("label", "areas", "probabilities", INPUT_EMBEDDING)
    mean: torch.Tensor
    std: torch.Tensor
    labels: torch.Tensor

    def __init__(
        self, net: UNet, mean: float, std: float, classes: int, flip: bool = False
    ) -> None:
        super().__init__()
        self.net, self.flip = net, flip
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.register_buffer("labels", torch.arange(classes + 1).view(1, -1, 1, 1))
        self.projection = Projection(net.bottleneck_channels)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return ((pixels.float() / 255.0 - self.mean) / self.std).unsqueeze(1)

    def forward(
        self, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.normalise(image)
        bottleneck, skips = self.net.encode(x)
        probabilities = F.softmax(self.net.decode(bottleneck, skips), dim=1)
        if self.flip:
            mirrored = F.softmax(self.net(x.flip(3)), dim=1).flip(3)
            probabilities = (probabilities + mirrored) / 2
        label = probabilities.argmax(dim=1, keepdim=True)
        areas = (label == self.labels).to(torch.int64).sum(dim=(2, 3))
        embedding = self.projection(bottleneck.mean(dim=(2, 3)))
        return label.squeeze(1).to(torch.uint8), areas, probabilities, embedding


def mean_iou(truth: np.ndarray, predicted: np.ndarray, classes: int) -> dict[str, Any]:
    """IoU per class over all pixels of the set (index 0 background, c + 1 for class c),
    `mean_iou`: the mean over the garment classes present in the truth (background left
    out; `background_iou` on its own), and `pixel_accuracy`: the task's own measure
    (contract/tasks/segmentation.py), as validation reports it."""
    iou, present = intersection_over_union(truth, predicted, classes + 1)
    garments = iou[1:][present[1:]]
    return {
        "iou": iou.tolist(),
        "mean_iou": float(garments.mean()) if garments.size else float("nan"),
        "background_iou": float(iou[0]),
        "pixel_accuracy": float((truth == predicted).mean()),
    }


@dataclass
class Segmenter:
    """The unfitted estimator: `classes` garment classes (the masks hold 0..classes) and its
    params: the network's `stem`, `width`, `depth`, `dilations`, `decoder_convs`, the
    training's `seed`, `validation_size`, `epochs`, `batch_size`, `lr`, `weight_decay`,
    `flip_prob` and `max_shift`, and `test_flip` (the pipeline averages the image and its
    mirror image; the per-epoch validation scores the network alone)."""

    classes: int
    params: dict[str, Any]

    def network(self) -> UNet:
        p = self.params
        return UNet(
            self.classes + 1,
            p["stem"],
            p["width"],
            p["depth"],
            tuple(p["dilations"]),
            p["decoder_convs"],
        )

    def fit(
        self, pixels: torch.Tensor, masks: torch.Tensor, key: str
    ) -> tuple[MaskOut, list[dict[str, float]]]:
        """(the fitted pipeline, its per-epoch history) on uint8 canvases [N, H, W] and
        their masks [N, H, W] (0 background, c + 1 for class c)."""
        p = self.params
        val_idx, fit_idx = seeded_split(len(pixels), p)
        net = self.network()  # the initial weights, drawn after seeding
        mean = float(pixels[fit_idx].float().div(255).mean())
        std = float(pixels[fit_idx].float().div(255).std())
        model = MaskOut(net, mean, std, self.classes, p["test_flip"])
        x_fit, y_fit = model.normalise(pixels[fit_idx]), masks[fit_idx].long()
        x_val, y_val = model.normalise(pixels[val_idx]), masks[val_idx].long()
        with channels_last_training(model.net):  # trains on channels_last batches
            history = _train_loop(model, x_fit, y_fit, x_val, y_val, p, self.classes, key)
        fitted(model.projection, model.eval().net.pooled, x_fit)
        return model, history

    def restore(self, state: dict[str, torch.Tensor]) -> MaskOut:
        """The fitted pipeline from its saved weights (normalisation included)."""
        mean, std = float(state["mean"]), float(state["std"])
        model = MaskOut(self.network(), mean, std, self.classes, self.params["test_flip"])
        model.load_state_dict(state)
        return model.eval()


def _augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, p: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flips per canvas and a small translation per batch, the same for the
    pixels and their mask (garments are left-right symmetric)."""
    flip = torch.rand(len(x), generator=generator) < p["flip_prob"]
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    y = torch.where(flip[:, None, None], y.flip(2), y)
    shift = p["max_shift"]
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=generator))
    return torch.roll(x, (dy, dx), (2, 3)), torch.roll(y, (dy, dx), (1, 2))


def _evaluate(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int
) -> tuple[float, dict[str, Any]]:
    net.eval()
    loss, predicted = 0.0, []
    with torch.no_grad():
        for i in range(0, len(x), 250):
            logits = net(x[i : i + 250])
            loss += float(F.cross_entropy(logits, y[i : i + 250], reduction="sum"))
            predicted.append(logits.argmax(1))
    scores = mean_iou(y.numpy(), torch.cat(predicted).numpy(), classes)
    return loss / max(1, y.numel()), scores


def _train_loop(
    model: MaskOut,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    p: dict[str, Any],
    classes: int,
    key: str,
) -> list[dict[str, float]]:
    net, batches = model.net, len(x) // p["batch_size"]
    optimizer = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=p["lr"], total_steps=p["epochs"] * batches
    )
    history: list[dict[str, float]] = []
    quarter = max(1, batches // 4)
    for epoch in range(1, p["epochs"] + 1):
        net.train()
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(p["seed"] + epoch)
        perm, seen, loss_sum = torch.randperm(len(x), generator=generator), 0, 0.0
        for i in range(batches):
            idx = perm[i * p["batch_size"] : (i + 1) * p["batch_size"]]
            xb, yb = _augment(x[idx], y[idx], generator, p)
            loss = F.cross_entropy(net(channels_last(xb)), yb)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            seen, loss_sum = seen + len(idx), loss_sum + loss.item() * len(idx)
            if (i + 1) % quarter == 0 and (i + 1) // quarter < 4:
                log.info(
                    "%s epoch %d/%d: %d%% of batches, loss %.4f",
                    key,
                    epoch,
                    p["epochs"],
                    100 * (i + 1) // batches,
                    loss_sum / seen,
                )
        val_loss, scores = _evaluate(net, x_val, y_val, classes)
        seconds = time.perf_counter() - started
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "val_loss": val_loss,
                "val_mean_iou": scores["mean_iou"],
                "val_background_iou": scores["background_iou"],
                "val_pixel_accuracy": scores["pixel_accuracy"],
                "seconds": seconds,
            }
        )
        log.info(
            "%s epoch %d/%d: train loss %.4f | val loss %.4f mIoU %.4f (background %.4f) | %.0fs",
            key,
            epoch,
            p["epochs"],
            loss_sum / seen,
            val_loss,
            scores["mean_iou"],
            scores["background_iou"],
            seconds,
        )
    return history
