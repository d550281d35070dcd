"""Fashion segmentation: the garment class of every pixel of a 64x64 canvas of
Fashion-MNIST items, composed here from the Debian package's images.

The data set has no masks, so `records` makes them, deterministically, at prepare: each
canvas holds 2-4 items in the cells of a 2x2 grid (`compose` says exactly how), and its
mask is each item's class + 1 where the item's ink is at least 32 of 255. Train canvases
use the train split's items only, test canvases the t10k items only. A U-Net-style network
(pipelines/estimators/segmenter.py) is trained on them.
"""

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec
from pipelines.estimators.segmenter import Segmenter
from pipelines.flavors import torch as FLAVOR

__all__ = ["FLAVOR", "build", "compose", "records"]

ITEM = 28  # Fashion-MNIST items are 28x28
TRAIN_CANVASES = 20_000  # composed from the 60,000 train items
TEST_CANVASES = 2_000  # composed from the 10,000 t10k items
SEED = 42  # the train canvases' seed; the test canvases use SEED + 1


def build(spec: ModelSpec) -> Segmenter:
    return Segmenter(len(spec.target.classes or []), spec.params)


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The items of each split composed into canvases: one record per canvas, its image
    and its mask as raw uint8 bytes."""
    (name,) = spec.fields
    size = (spec.fields[name].shape or [0])[0]
    parts = []
    for split, count, seed in (("train", TRAIN_CANVASES, SEED), ("test", TEST_CANVASES, SEED + 1)):
        items = source[source["split"] == split]
        pixels = np.frombuffer(b"".join(items["image"]), np.uint8).reshape(-1, ITEM, ITEM)
        images, masks = compose(pixels, items["label"].to_numpy(np.int64), count, seed, size)
        parts.append(
            pd.DataFrame(
                {
                    name: [image.tobytes() for image in images],
                    spec.target.column: [mask.tobytes() for mask in masks],
                    "split": split,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def compose(
    pixels: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
    size: int = 64,
    grid: int = 2,
    min_items: int = 2,
    max_items: int = 4,
    threshold: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [count, size, size], masks uint8 [count, size, size]) from items
    `pixels` uint8 [N, 28, 28] and their class indices `labels` [N] (0..C-1).

    How a canvas is made:

    1. The canvas is cut into a `grid` x `grid` grid of square cells of `size // grid`
       pixels (2x2 cells of 32x32 by default); a cell holds at most one item, so items never
       overlap, and a cell must be at least 28 pixels wide.
    2. The canvas gets k items, k uniform in [`min_items`, `max_items`] (capped at the cell
       count), in k distinct cells chosen uniformly at random.
    3. Each item sits wholly inside its cell, its top-left corner jittered uniformly by
       0..(cell - 28) pixels in each direction (0..4 px with 32-pixel cells).
    4. The items are taken in the order of a random permutation of all N items, canvas by
       canvas and cell by cell, so each item is used at most once while the permutation
       lasts; only when it runs out is a fresh permutation drawn (and items repeat).
    5. The image is 0 (background) except where an item is pasted (its raw pixels); the mask
       is the item's class index + 1 where the item's pixel >= `threshold`, else 0.

    Every draw comes from `np.random.default_rng(seed)`, in this order: the k of every canvas
    (`integers`, one array), the cells' order of every canvas (`argsort` of a `random`
    [count, cells] array; the first k cells are used), the jitters (`integers`, [count,
    cells, 2] as (row, column)), then the items' permutation(s) (`permutation(N)`).
    """
    if pixels.ndim != 3 or pixels.shape[1:] != (ITEM, ITEM) or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8 [N, {ITEM}, {ITEM}], got {pixels.shape}")
    if len(labels) != len(pixels) or len(pixels) == 0:
        raise ValueError("pixels and labels must be non-empty and of the same length")
    cell, cells = size // grid, grid * grid
    if cell < ITEM:
        raise ValueError(f"cells of {cell} px cannot hold {ITEM} px items")
    if not 1 <= min_items <= max_items:
        raise ValueError("need 1 <= min_items <= max_items")
    rng = np.random.default_rng(seed)
    ks = np.minimum(rng.integers(min_items, max_items + 1, size=count), cells)
    order = rng.random((count, cells)).argsort(axis=1)
    jitter = rng.integers(0, cell - ITEM + 1, size=(count, cells, 2))
    needed = int(ks.sum())
    stream = np.concatenate(
        [rng.permutation(len(pixels)) for _ in range(-(-needed // len(pixels)))]
    )[:needed]
    images = np.zeros((count, size, size), np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    inked = pixels >= threshold
    classes = labels.astype(np.int64) + 1
    used = 0
    for n in range(count):
        for slot in order[n, : ks[n]]:
            item = stream[used]
            used += 1
            top = (slot // grid) * cell + jitter[n, slot, 0]
            left = (slot % grid) * cell + jitter[n, slot, 1]
            images[n, top : top + ITEM, left : left + ITEM] = pixels[item]
            masks[n, top : top + ITEM, left : left + ITEM] = inked[item] * classes[item]
    return images, masks
