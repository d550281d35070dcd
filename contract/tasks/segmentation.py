"""Semantic segmentation: the class of every pixel (fashion_segmentation).

The target is a mask of the image's size: uint8 bytes, 0 for the background and c + 1 for
class c. The graph returns the mask (`label`, uint8 [N, H, W]), the pixels of each class
(`areas`, int64 [N, C + 1], background first) and, for scoring only, the probabilities
[N, C + 1, H, W]. Scores: intersection over union per class over the whole test split's
pixels, `mean_iou` over the classes present in the truth (background apart: it covers most
of an image and would flatter the mean), the background's own IoU and pixel accuracy.
"""

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    LABEL,
    SCORE,
    Plot,
    Served,
    decided,
    decisive_probabilities,
    no_payload_change,
    rounded,
    served_as_is,
)
from contract.tasks.outcomes import no_outcome as outcome  # no masks taken back at /feedback yet
from contract.tasks.outcomes import no_outcomes as true_outcomes
from contract.tasks.outcomes import no_performance as performance
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "outcome", "performance", "targets", "true_outcomes"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, False, True  # label: the largest class shown
LEARNS_FROM_OUTCOMES = False  # masks sent back are not taken yet (no outcome type)
NATIVE = "probabilities"
RELATIVE_PARITY = False
REFERENCE_SPLIT = "train"
BULK = True
SCORE_VALUES = False  # the served score: the share of the image its classes cover
DISCRETE_TARGET = False
IMPORTANCE_SCORING = ""
JUDGED_OUTPUTS = ("probabilities",)
PIPELINE_OUTPUTS = ("probabilities",)  # [N, C + 1, H, W]: scoring only, never served
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
BACKGROUND = "background"

labels = decided  # argmax over the classes: [N, H, W]
decisive = decisive_probabilities  # pixels whose top two classes are apart
serve = served_as_is
payload = no_payload_change


def validate(spec: "ModelSpec") -> None:
    if not spec.target.classes:
        raise ValueError("a segmentation task needs target.classes (mask value c + 1: class c)")
    if [f.type for f in spec.fields.values()] != ["image"]:
        raise ValueError("a segmentation task reads one field of type image")


def class_names(spec: "ModelSpec") -> list[str]:
    """The classes the masks hold, background first (mask value = index)."""
    return [BACKGROUND, *(spec.target.classes or [])]


def _shape(spec: "ModelSpec") -> tuple[int, int]:
    (field,) = spec.fields.values()
    height, width = field.shape or (0, 0)
    return height, width


def target_column(spec: "ModelSpec") -> Any:
    """The mask's bytes: one value per pixel, at most the number of classes."""
    import pandera.pandas as pa

    height, width = _shape(spec)
    top = len(class_names(spec)) - 1

    def mask(value: Any) -> bool:
        if not isinstance(value, bytes | bytearray) or len(value) != height * width:
            return False
        return bool(np.frombuffer(value, np.uint8).max(initial=0) <= top)

    return pa.Column(
        checks=[
            pa.Check(
                mask,
                element_wise=True,
                error=f"is not a {height}x{width} uint8 mask of values 0..{top}",
            )
        ],
        nullable=False,
    )


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    """uint8 [N, H, W] masks."""
    height, width = _shape(spec)
    return np.frombuffer(b"".join(y), np.uint8).reshape(len(y), height, width)


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The probabilities [N, C + 1, H, W], float32 (float64 would be 2x the memory)."""
    return np.asarray(outputs["probabilities"], np.float32)


def intersection_over_union(
    y: np.ndarray, predicted: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(IoU of each class over every pixel, whether the class occurs in the truth)."""
    pairs = np.bincount(
        y.reshape(-1).astype(np.int64) * classes + predicted.reshape(-1).astype(np.int64),
        minlength=classes * classes,
    ).reshape(classes, classes)  # [true, predicted] pixel counts
    hits = np.diag(pairs).astype(np.float64)
    union = pairs.sum(axis=0) + pairs.sum(axis=1) - hits
    return hits / np.maximum(union, 1), pairs.sum(axis=1) > 0


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """`predicted`: probabilities [N, C + 1, H, W]; the mask is the most probable class."""
    masks = decided(predicted, None)
    iou, present = intersection_over_union(y, masks, len(class_names(spec)))
    garments = iou[1:][present[1:]]
    return rounded(
        {
            "mean_iou": garments.mean() if garments.size else 0.0,
            "worst_class_iou": garments.min() if garments.size else 0.0,
            "background_iou": iou[0],
            "pixel_accuracy": (masks == y).mean(),
        }
    )


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    """IoU per class, and the first test images with their true and predicted masks."""
    names = class_names(spec)
    masks = decided(predicted, None)
    iou, present = intersection_over_union(y, masks, len(names))
    wanted: dict[str, Plot] = {
        "class_iou.png": (
            "class_iou",
            ({n: v for n, v, p in zip(names, iou, present, strict=True) if p},),
        )
    }
    pictures = views.get("pictures") or []
    if pictures:
        shown = len(pictures)
        wanted["masks.png"] = ("masks", (pictures, y[:shown], masks[:shown], names))
    return wanted


def mask_png(mask: np.ndarray) -> str:
    """A mask as base64 grey PNG: pixel value = the class's index in `classes`."""
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(encoded, "PNG")
    return base64.b64encode(encoded.getvalue()).decode()


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    """Each image's mask (PNG), the pixels of each class shown and the largest one."""
    names = class_names(served.spec)
    answers = []
    for mask, areas in zip(result["label"], result["areas"].tolist(), strict=True):
        shown = {n: int(a) for n, a in zip(names, areas, strict=True) if a and n != BACKGROUND}
        answers.append(
            {
                "label": max(shown.items(), key=lambda item: item[1])[0] if shown else BACKGROUND,
                "areas": shown,
                "mask": mask_png(mask),
                "classes": names,
            }
        )
    return answers


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The share of the picture its classes cover (their areas over the mask's pixels: the
    PNG's header, IHDR's width and height), and the largest class."""
    try:
        header = base64.b64decode(prediction["mask"][:44])
        width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
        covered = float(sum(prediction["areas"].values())) / max(width * height, 1)
    except (ValueError, TypeError, KeyError, AttributeError):
        covered = None
    return {SCORE: covered, LABEL: prediction.get("label")}


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "A mask per image: 0 background, c + 1 where class c's item is.",
        "artifact": (
            "The whole inference pipeline as one ONNX graph: uint8 pixels in, the mask, "
            "each class's area and the probabilities out; checked against the native model "
            "on every test image at export (masks where the top two classes are apart)."
        ),
    }
