"""A model's reference data for drift: the training snapshot, as the drift service sees it.

`register` (pipelines/register.py) logs `reference/reference.parquet` with every version: a
seeded sample of the training split in the drift view below, plus the model's own
predictions on it. The drift
service puts logged traffic through the same view, so both sides come from one function.
Numbers and categories are compared as they are; a text field by its length in characters
and words, an image by its mean, spread and share of ink (pixel drift means nothing), a
photo by its size, brightness and contrast.
"""

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec
from contract.feeds import PHOTO_VIEW, decode_photo, photo_summary

ARTIFACT_DIR = "reference"
ARTIFACT = f"{ARTIFACT_DIR}/reference.parquet"
ROWS = 5000  # enough for stable distances, small enough to log with every version
SEED = 0
PREDICTION = "prediction"  # P(positive), P(top class) or the predicted value
PREDICTED_LABEL = "predicted_label"
PREDICTIONS = (PREDICTION, PREDICTED_LABEL)


@dataclass(frozen=True)
class Columns:
    """The drift view's columns by kind (Evidently's data definition)."""

    numerical: list[str]
    categorical: list[str]

    @property
    def features(self) -> list[str]:
        return [c for c in self.numerical + self.categorical if c not in PREDICTIONS]


def columns(spec: ModelSpec) -> Columns:
    numerical, categorical = [], []
    for name, field in spec.fields.items():
        if field.type in ("float", "int"):
            numerical.append(name)
        elif field.type == "text":
            numerical += [f"{name}.chars", f"{name}.words"]
        elif field.type == "image":
            numerical += [f"{name}.mean", f"{name}.std", f"{name}.ink"]
        elif field.type == "photo":
            numerical += [f"{name}.{part}" for part in PHOTO_VIEW]
        elif field.type == "series":
            numerical += [f"{name}.mean", f"{name}.std", f"{name}.last"]
        else:
            categorical.append(name)
    numerical.append(PREDICTION)
    if spec.labels_served:
        categorical.append(PREDICTED_LABEL)
    return Columns(numerical, categorical)


def _image(value: Any) -> np.ndarray:
    """Raw bytes (the split), base64 text (the prediction log) or nested lists (a request)."""
    if isinstance(value, str):
        value = base64.b64decode(value)
    if isinstance(value, bytes | bytearray):
        return np.frombuffer(value, np.uint8)
    return np.asarray(value, np.uint8).reshape(-1)


def _photo(value: Any) -> tuple[float, ...]:
    """(height, width, mean, std) of a picture: its summary as the prediction log keeps it,
    or that of encoded bytes (the split) or base64 text; NaN where it is missing or does not
    decode."""
    if isinstance(value, dict):
        return tuple(float(value.get(part, np.nan)) for part in PHOTO_VIEW)
    if isinstance(value, str):
        value = base64.b64decode(value)
    try:
        summary = photo_summary(decode_photo(value))
    except (OSError, ValueError, TypeError):
        return (np.nan,) * len(PHOTO_VIEW)
    return tuple(summary.get(part, np.nan) for part in PHOTO_VIEW)


def _pixels(values: pd.Series) -> np.ndarray:
    return np.stack([_image(v) for v in values]).astype(np.float32) / 255


def drift_view(spec: ModelSpec, inputs: pd.DataFrame) -> pd.DataFrame:
    """The records' fields as the drift report compares them (no prediction columns)."""
    view: dict[str, pd.Series | np.ndarray] = {}
    for name, field in spec.fields.items():
        values = inputs[name] if name in inputs else pd.Series([None] * len(inputs))
        values = values.reset_index(drop=True)
        if field.type in ("float", "int"):
            view[name] = pd.to_numeric(values, errors="coerce").astype(float)
        elif field.type == "text":
            text = values.fillna("").astype(str)
            view[f"{name}.chars"] = text.str.len().astype(float)
            view[f"{name}.words"] = text.map(lambda t: float(len(t.split())))
        elif field.type == "series":  # its level, spread and latest value
            length = (field.shape or [1])[0]
            steps = np.full((len(values), length), np.nan)
            for i, v in enumerate(values):
                if v is not None and len(v) == length:
                    steps[i] = np.asarray(v, dtype=np.float64)
            view[f"{name}.mean"] = steps.mean(axis=1)
            view[f"{name}.std"] = steps.std(axis=1)
            view[f"{name}.last"] = steps[:, -1] if length else np.zeros(len(values))
        elif field.type == "photo":
            parts = np.array([_photo(v) for v in values], np.float64).reshape(-1, len(PHOTO_VIEW))
            for i, part in enumerate(PHOTO_VIEW):
                view[f"{name}.{part}"] = parts[:, i]
        elif field.type == "image":
            pixels = _pixels(values) if len(values) else np.zeros((0, 1), np.float32)
            view[f"{name}.mean"] = pixels.mean(axis=1)
            view[f"{name}.std"] = pixels.std(axis=1)
            view[f"{name}.ink"] = (pixels > 0.1).mean(axis=1)
        else:
            view[name] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(view, index=range(len(inputs)))


def summarize(spec: ModelSpec, result: dict[str, np.ndarray]) -> tuple[list[float], list[str]]:
    """(one score per record, labels where the task serves them) of a graph's outputs: the
    task's drift view of its outputs (contract/tasks/<task>.py `summarize`)."""
    return spec.task_kind.summarize(spec, result)


def sample(train: pd.DataFrame) -> pd.DataFrame:
    """The seeded rows of the training split that stand for it."""
    if len(train) <= ROWS:
        return train.reset_index(drop=True)
    return train.sample(ROWS, random_state=SEED).reset_index(drop=True)


def reference(spec: ModelSpec, rows: pd.DataFrame, result: dict[str, np.ndarray]) -> pd.DataFrame:
    """The drift view of `rows` with the model's predictions on them (`result`)."""
    view = drift_view(spec, rows)
    scores, labels = summarize(spec, result)
    view[PREDICTION] = scores
    if spec.labels_served:
        view[PREDICTED_LABEL] = labels
    return view
