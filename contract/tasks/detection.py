"""Object detection: the boxes, scores and classes found in each picture (tree_detection).

The target is a list of boxes [xmin, ymin, xmax, ymax] in pixels per picture. The graph
decodes, thresholds and suppresses overlaps itself (NMS inside it) and returns a fixed
number of rows per picture, `count` of them real: count [N], boxes [N, M, 4], scores
[N, M], labels [N, M]. Scores are COCO's: average precision at IoU 0.5 (`map_50`, the
floor), at 0.75 and over 0.5:0.95, and recall at IoU 0.5, by pycocotools' COCOeval.
"""

import contextlib
import io
import math
import statistics
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    SCORE,
    Plot,
    Served,
    no_labels,
    no_margin,
    no_payload_change,
    rounded,
    served_as_is,
)
from contract.tasks.outcomes import no_outcome as outcome  # no boxes taken back at /feedback yet
from contract.tasks.outcomes import no_outcomes as true_outcomes
from contract.tasks.outcomes import no_performance as performance
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "outcome", "performance", "targets", "true_outcomes"]
SUPERVISED, STRATIFIED, LABELS_SERVED = True, False, False
LEARNS_FROM_OUTCOMES = False  # boxes sent back are not taken yet (no outcome type)
NATIVE = "detections"
# boxes in pixels and scores in [0, 1]: relative parity holds both to float32's precision
RELATIVE_PARITY = True
REFERENCE_SPLIT = "train"
BULK = False  # a client sends a picture at a time
SCORE_VALUES = True  # the served score is a count of boxes
DISCRETE_TARGET = False
IMPORTANCE_SCORING = ""
JUDGED_OUTPUTS = ("count", "boxes", "scores", "labels")
PIPELINE_OUTPUTS: tuple[str, ...] = ()
BOX_SIZE = "prediction.box_size"  # the drift view's median box side, in pixels
# the outputs' drift view besides the count of boxes: their size (`answered`)
OUTPUT_VIEW = (BOX_SIZE,)
MAX_DETECTIONS = 300  # COCOeval's largest maxDets: every row a picture may return
COLUMNS = 6  # a native detection: xmin, ymin, xmax, ymax, score, class

labels = no_labels
decisive = no_margin
serve = served_as_is
payload = no_payload_change


def validate(spec: "ModelSpec") -> None:
    if not spec.target.classes:
        raise ValueError("a detection task needs target.classes (the box classes, in order)")
    if [f.type for f in spec.fields.values()] != ["photo"]:
        raise ValueError("a detection task reads one field of type photo")


def class_names(spec: "ModelSpec") -> list[str]:
    return list(spec.target.classes or [])


def _box_list(value: Any) -> bool:
    """A picture's boxes: [xmin, ymin, xmax, ymax] rows, finite, not inverted."""
    try:
        boxes = np.asarray(list(value), dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):
        return False
    return bool(
        np.isfinite(boxes).all()
        and (boxes[:, :2] >= 0).all()
        and (boxes[:, 2] > boxes[:, 0]).all()
        and (boxes[:, 3] > boxes[:, 1]).all()
    )


def target_column(spec: "ModelSpec") -> Any:
    import pandera.pandas as pa

    return pa.Column(
        checks=[
            pa.Check(
                _box_list,
                element_wise=True,
                error="is not a list of [xmin, ymin, xmax, ymax] boxes (xmin < xmax, ymin < ymax)",
            )
        ],
        nullable=False,
    )


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    """An object array: one float32 [K, 4] array of boxes per picture."""
    out = np.empty(len(y), dtype=object)
    for i, value in enumerate(y):
        out[i] = np.asarray(list(value), dtype=np.float32).reshape(-1, 4)
    return out


def native(outputs: dict[str, np.ndarray], frame: Any, spec: Any) -> np.ndarray:
    """[N, M, 6]: each row's box, score and class; the rows past a picture's count zero."""
    boxes = np.asarray(outputs["boxes"], np.float64)
    scores = np.asarray(outputs["scores"], np.float64)[..., None]
    classes = np.asarray(outputs["labels"], np.float64)[..., None]
    rows = np.arange(boxes.shape[1])[None, :] < np.asarray(outputs["count"]).reshape(-1, 1)
    return np.concatenate([boxes, scores, classes], axis=2) * rows[..., None]


def _detections(predicted: np.ndarray) -> list[np.ndarray]:
    """Each picture's real rows (score > 0: the graph keeps none at 0)."""
    return [rows[rows[:, 4] > 0] for rows in predicted]


def coco_eval(y: np.ndarray, predicted: np.ndarray, classes: int) -> Any:
    """pycocotools' COCOeval, evaluated and accumulated, of the boxes against the truth
    (maxDets 1, 10, MAX_DETECTIONS); None when nothing was detected at all."""
    from pycocotools.coco import COCO  # scoring only: the service never imports it
    from pycocotools.cocoeval import COCOeval

    truth = COCO()
    annotations: list[dict[str, Any]] = []
    for i, boxes in enumerate(y):
        for b in boxes:
            width, height = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,  # unique over every picture
                    "image_id": i,
                    "category_id": 1,
                    "bbox": [float(b[0]), float(b[1]), width, height],
                    "area": width * height,
                    "iscrowd": 0,
                }
            )
    truth.dataset = {
        "images": [{"id": i} for i in range(len(y))],
        "annotations": annotations,
        "categories": [{"id": c + 1} for c in range(classes)],
    }
    rows = [
        [i, d[0], d[1], d[2] - d[0], d[3] - d[1], d[4], d[5] + 1]
        for i, found in enumerate(_detections(predicted))
        for d in found
    ]
    if not rows:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth.createIndex()
        found = truth.loadRes(np.asarray(rows, dtype=np.float64))
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.params.maxDets = [1, 10, MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def _mean(values: np.ndarray) -> float:
    """COCO's mean over the cells that exist (-1 marks a class or area with no truth)."""
    kept = values[values > -1]
    return float(kept.mean()) if kept.size else 0.0


def map_50(y: np.ndarray, predicted: np.ndarray, classes: int = 1) -> float:
    """COCO's average precision at IoU 0.5 (area all, maxDets MAX_DETECTIONS)."""
    evaluation = coco_eval(y, predicted, classes)
    return 0.0 if evaluation is None else _mean(evaluation.eval["precision"][0, :, :, 0, -1])


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """COCO's average precision and recall over every picture (area: all, maxDets:
    MAX_DETECTIONS), and the boxes found per true box."""
    evaluation = coco_eval(y, predicted, len(class_names(spec)))
    truth = sum(len(boxes) for boxes in y)
    found = sum(len(rows) for rows in _detections(predicted))
    if evaluation is None:
        result = {"map_50": 0.0, "map_75": 0.0, "map": 0.0, "recall_50": 0.0}
    else:
        precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, class]
        recall = evaluation.eval["recall"][:, :, 0, -1]  # [IoU, class]
        result = {
            "map_50": _mean(precision[0]),
            "map_75": _mean(precision[5]),
            "map": _mean(precision),
            "recall_50": _mean(recall[0]),
        }
    result["boxes_per_truth"] = found / max(truth, 1)
    if threshold is not None:  # what the service answers: the boxes at its threshold
        result |= matched_at(y, predicted, threshold)
    return rounded(result)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [K, 4] with every box of `b` [L, 4]: [K, L]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return np.asarray(overlap / np.maximum(area_a[:, None] + area_b[None, :] - overlap, 1e-9))


def matched_at(y: np.ndarray, predicted: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of the boxes at or above `threshold`: each, best first,
    matches the unmatched true box it overlaps most if their IoU is at least 0.5."""
    hits = found = truth = 0
    for boxes, rows in zip(y, _detections(predicted), strict=True):
        kept = rows[rows[:, 4] >= threshold]
        kept = kept[np.argsort(-kept[:, 4], kind="stable")]
        free = np.ones(len(boxes), bool)
        overlaps = box_iou(kept[:, :4], np.asarray(boxes, np.float64).reshape(-1, 4))
        for row in overlaps:
            candidates = np.where(free, row, -1.0)
            if len(candidates) and candidates.max() >= 0.5:
                free[int(candidates.argmax())] = False
                hits += 1
        found, truth = found + len(kept), truth + len(boxes)
    precision, recall = hits / max(found, 1), hits / max(truth, 1)
    return {
        "precision_at_threshold": precision,
        "recall_at_threshold": recall,
        "f1_at_threshold": 2 * precision * recall / max(precision + recall, 1e-9),
    }


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    """Precision against recall at IoU 0.5 and 0.75, and the first test picture with its
    true boxes and the boxes found."""
    wanted: dict[str, Plot] = {}
    evaluation = coco_eval(y, predicted, len(class_names(spec)))
    if evaluation is not None:
        curves = evaluation.eval["precision"][[0, 5], :, 0, 0, -1]  # class 1, all areas
        wanted["precision_recall.png"] = (
            "detection_pr",
            (evaluation.params.recThrs, {"IoU 0.5": curves[0], "IoU 0.75": curves[1]}),
        )
    pictures = views.get("pictures") or []
    if pictures:
        found = _detections(predicted[:1])[0]
        wanted["detections.png"] = (
            "detections",
            (pictures[0], y[0], found[:, :4], found[:, 4], threshold),
        )
    return wanted


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    """Each picture's boxes, best first: those at or above the model's threshold (every
    box the graph returns where it has none)."""
    names = class_names(served.spec)
    floor = served.threshold or 0.0
    answers = []
    for count, boxes, scores, classes in zip(
        np.asarray(result["count"]).reshape(-1).tolist(),
        result["boxes"].tolist(),
        result["scores"].tolist(),
        result["labels"].tolist(),
        strict=True,
    ):
        kept = [
            {"box": [round(v, 2) for v in box], "score": round(s, 5), "label": names[int(c)]}
            for box, s, c in zip(boxes[:count], scores[:count], classes[:count], strict=True)
            if s >= floor
        ]
        answers.append({"count": len(kept), "boxes": kept})
    return answers


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The boxes answered (at the served threshold) and their median size: the square root
    of a box's area in pixels (none where no box was answered)."""
    boxes = [b["box"] for b in prediction.get("boxes") or []]
    if "count" not in prediction:
        return {SCORE: None, BOX_SIZE: None}
    sides = [math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)) for x0, y0, x1, y1 in boxes]
    return {
        SCORE: float(prediction["count"]),
        BOX_SIZE: statistics.median(sides) if sides else None,
    }


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "Boxes [xmin, ymin, xmax, ymax] in pixels; every picture fully annotated.",
        "artifact": (
            "The whole inference pipeline as one ONNX graph: RGB uint8 pixels and each "
            "picture's size in, normalisation, the network, box decoding, the score "
            "threshold and non-maximum suppression (ONNX NonMaxSuppression) inside; checked "
            "against the native model on every test picture at export."
        ),
    }
