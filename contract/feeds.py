"""Records to the graph's input tensors: the one mapping training, export and serving share.

One convention for missing values everywhere: a missing number is NaN (imputed inside the
graph), a missing category or text is the empty string. A field's values arrive as a column
(`tensor`): from a data frame (`onnx_feeds`, the pipeline's stages) or from validated request
records (`record_feeds`, the service), so the two cannot drift apart.
"""

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import pandas as pd

from contract.catalog import InputField, ModelSpec

NUMERIC = ("float", "int")


def tensor(field: InputField, values: Sequence[Any], size: int) -> np.ndarray:
    """One field's column as its graph input: float32 [N, 1] numbers, uint8 [N, H, W] pixels,
    float32 [N, length] series, or object [N, 1] strings."""
    if field.type in NUMERIC:  # None (a missing value) is NaN as float64
        return np.array(values, np.float64).astype(np.float32).reshape(size, 1)
    if field.type == "image":
        return np.frombuffer(b"".join(values), np.uint8).reshape(size, *(field.shape or []))
    if field.type == "series":
        if not size:
            return np.zeros((0, *(field.shape or [0])), np.float32)
        return np.array(values, dtype=np.float32).reshape(size, -1)
    column = np.empty((size, 1), object)
    column[:, 0] = ["" if v is None else v for v in values]
    return column


def record_feeds(records: Sequence[Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """The tensors of validated records (objects with one attribute per field). The records'
    values in one pass (attrgetter, transposed by zip) and each column converted whole: a
    column at a time over the records, with a one-element list per value, took 31 ms of a
    1000-row house_prices batch (73 fields) where this takes 8."""
    fields = spec.fields
    names, size = list(fields), len(records)
    if len(names) == 1:
        columns: list[Any] = [[getattr(r, names[0]) for r in records]]
    elif size:
        columns = list(zip(*map(attrgetter(*names), records), strict=True))
    else:
        columns = [[] for _ in names]
    return {
        name: tensor(fields[name], values, size)
        for name, values in zip(names, columns, strict=True)
    }


def onnx_feeds(frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The tensors of a data frame's rows: pandas' missing markers (NaN, NA) become None
    first, so that every missing value takes the one path `tensor` gives it."""
    feeds: dict[str, np.ndarray] = {}
    for name, field in spec.fields.items():
        column = frame[name]
        if field.type in NUMERIC:
            values: Any = pd.to_numeric(column).to_numpy(np.float64)
        elif field.type in ("image", "series"):
            values = column.tolist()
        else:
            values = column.astype(object).where(column.notna(), None).tolist()
        feeds[name] = tensor(field, values, len(frame))
    return feeds
