"""Records to the graph's input tensors: the one mapping training, export and serving share.

One convention for missing values everywhere: a missing number is NaN (imputed inside the
graph), a missing category or text is the empty string. A field's values arrive as a column
(`tensor`): from a data frame (`onnx_feeds`, the pipeline's stages) or from validated request
records (`record_feeds`, the service), so the two cannot drift apart.
"""

import io
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import pandas as pd

# a recording's decoding and summary live in contract/audio.py: here beside a photo's
from contract.audio import AUDIO_VIEW as AUDIO_VIEW
from contract.audio import Recording as Recording
from contract.audio import decode_recording as decode_recording
from contract.audio import recording_summary as recording_summary
from contract.catalog import InputField, ModelSpec

NUMERIC = ("float", "int")
SIZE_SUFFIX = "_size"  # a photo's or a recording's second graph input: <name>_size
# Field types the graph reads a record at a time, each with its size (one_at_a_time)
SIZED = ("photo", "audio")


PHOTO_VIEW = ("height", "width", "mean", "std")  # a picture's drift summary


class Photo(bytes):
    """An encoded picture as sent, with its decoded RGB pixels [H, W, 3] (what the graph
    reads) and its drift summary (what the prediction log keeps: `photo_summary`):
    validation decodes it once."""

    pixels: np.ndarray
    summary: dict[str, float]

    @classmethod
    def of(cls, encoded: bytes, pixels: np.ndarray) -> "Photo":
        photo = cls(encoded)
        photo.pixels = pixels
        photo.summary = photo_summary(pixels)
        return photo


def photo_summary(pixels: np.ndarray) -> dict[str, float]:
    """A picture's height, width and the mean and spread of its pixels in [0, 1]: what the
    drift report compares (5 ms for 1000x1000). The prediction log keeps this rather than the
    picture: a tile's 1.5 MB of base64 per request would pass the log's row cap
    (SERVE_PREDICTION_LOG_MAX_BYTES, 1 MiB), which stores such a row's inputs as markers the
    drift window skips, so the window would see the small pictures only."""
    scaled = np.asarray(pixels, np.float32) / 255
    height, width = scaled.shape[:2]
    values = (height, width, scaled.mean(), scaled.std()) if scaled.size else (height, width)
    return dict(zip(PHOTO_VIEW, map(float, values), strict=False))


def decode_photo(value: bytes) -> np.ndarray:
    """RGB pixels [H, W, 3] of an encoded picture (PNG or JPEG), or of a Photo as decoded."""
    pixels = getattr(value, "pixels", None)
    if pixels is not None:
        return np.asarray(pixels)
    from PIL import Image

    with Image.open(io.BytesIO(value)) as image:
        return np.asarray(image.convert("RGB"))


def photo_tensors(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(pictures [N, H, W, 3] padded with zeros to the largest, sizes [N, 2])."""
    pictures = [decode_photo(v) for v in values]
    sizes = np.array([p.shape[:2] for p in pictures], np.int64).reshape(len(pictures), 2)
    height, width = sizes.max(axis=0) if len(pictures) else (0, 0)
    batch = np.zeros((len(pictures), int(height), int(width), 3), np.uint8)
    for i, picture in enumerate(pictures):
        batch[i, : picture.shape[0], : picture.shape[1]] = picture
    return batch, sizes


def recording_tensors(
    values: Sequence[Recording | bytes], max_samples: int
) -> tuple[np.ndarray, np.ndarray]:
    """(samples [N, longest] float32 padded with zeros, each one's sample count [N, 1])."""
    recordings = [decode_recording(v, max_samples) for v in values]
    sizes = np.array([len(r) for r in recordings], np.int64).reshape(len(recordings), 1)
    batch = np.zeros((len(recordings), int(sizes.max(initial=0))), np.float32)
    for i, samples in enumerate(recordings):
        batch[i, : len(samples)] = samples
    return batch, sizes


def logged_tensors(feeds: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, np.ndarray]:
    """An OIP batch's tensors as the prediction log keeps them: a recording as its summary
    per record (an object [N, 1] column, as /predict's records log a Recording), not its
    samples, and without its sizes."""
    out = dict(feeds)
    for name, field in spec.fields.items():
        if field.type == "audio" and name in feeds and name + SIZE_SUFFIX in feeds:
            sizes = out.pop(name + SIZE_SUFFIX)[:, 0]
            column = np.empty((len(sizes), 1), object)
            column[:, 0] = [
                recording_summary(s[:n]) for s, n in zip(feeds[name], sizes, strict=True)
            ]
            out[name] = column
    return out


def one_at_a_time(spec: ModelSpec) -> bool:
    """Whether records run through the graph one at a time: photos and recordings, whose
    batch pads each to the largest (the network sees the padding at a picture's borders or a
    recording's end, so a record's answer would depend on its batchmates; and sizes vary, so
    padding is waste)."""
    return any(f.type in SIZED for f in spec.fields.values())


def each_record(feeds: dict[str, np.ndarray], spec: ModelSpec) -> list[dict[str, np.ndarray]]:
    """A batch's tensors record by record, each photo or recording cut back to its own size."""
    size = len(next(iter(feeds.values()))) if feeds else 0
    sized = {n: f.type for n, f in spec.fields.items() if f.type in SIZED}
    records = []
    for i in range(size):
        record = {name: array[i : i + 1] for name, array in feeds.items()}
        for name, kind in sized.items():
            if kind == "photo":
                height, width = (int(v) for v in record[name + SIZE_SUFFIX][0])
                record[name] = record[name][:, :height, :width]
            else:
                record[name] = record[name][:, : int(record[name + SIZE_SUFFIX][0, 0])]
        records.append(record)
    return records


def input_names(spec: ModelSpec) -> list[str]:
    """The graph's inputs: one per field, and a photo's or a recording's sizes after it."""
    names = []
    for name, field in spec.fields.items():
        names.append(name)
        if field.type in SIZED:
            names.append(name + SIZE_SUFFIX)
    return names


def _field_feeds(
    name: str, field: InputField, values: Sequence[Any], size: int
) -> dict[str, np.ndarray]:
    if field.type == "photo":
        pictures, sizes = photo_tensors(values)
        return {name: pictures, name + SIZE_SUFFIX: sizes}
    if field.type == "audio":
        samples, counts = recording_tensors(values, (field.shape or [0])[0])
        return {name: samples, name + SIZE_SUFFIX: counts}
    return {name: tensor(field, values, size)}


def tensor(field: InputField, values: Sequence[Any], size: int) -> np.ndarray:
    """One field's column as its graph input: float32 [N, 1] numbers, uint8 [N, H, W] pixels,
    float32 [N, length] series, or object [N, 1] strings (a photo: `photo_tensors`; a
    recording: `recording_tensors`)."""
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
    feeds: dict[str, np.ndarray] = {}
    for name, values in zip(names, columns, strict=True):
        feeds |= _field_feeds(name, fields[name], values, size)
    return feeds


def onnx_feeds(frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The tensors of a data frame's rows: pandas' missing markers (NaN, NA) become None
    first, so that every missing value takes the one path `tensor` gives it."""
    feeds: dict[str, np.ndarray] = {}
    for name, field in spec.fields.items():
        column = frame[name]
        if field.type in NUMERIC:
            values: Any = pd.to_numeric(column).to_numpy(np.float64)
        elif field.type in ("image", "photo", "series", "audio"):
            values = column.tolist()
        else:
            values = column.astype(object).where(column.notna(), None).tolist()
        feeds |= _field_feeds(name, field, values, len(frame))
    return feeds
