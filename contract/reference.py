"""A model's reference data for drift: the training snapshot, as the drift service sees it.

`export` (pipelines/export.py) makes `reference/reference.parquet` beside the graph and
`register` logs it with every version: a seeded sample of the training split in the drift
view below, plus the served graph's own predictions on it. The drift
service puts logged traffic through the same view, so both sides come from one function.
Numbers and categories are compared as they are; a text field by its length in characters
and words, an image by its mean, spread and share of ink (pixel drift means nothing), a
photo by its size, brightness and contrast, a recording by its length, loudness and peak;
and either picture, or a transformer's text, by the model's embedding of it
(INPUT_EMBEDDING: its backbone's pooled features projected on their first principal
components, a graph output the service logs beside the record), which moves with what the
pictures show or the texts say, not only with their light or length. The
outputs are compared as the task's `answered` sees a served answer (the reference's answers
made by the task's `format`, as served): the score, the label where one is served, and the
task's further columns (a detector's box size).
"""

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contract.audio import AUDIO_VIEW, decode_recording, recording_summary
from contract.catalog import EMBEDDING_DIMS, INPUT_EMBEDDING, InputField, ModelSpec, embedded
from contract.feeds import PHOTO_VIEW, decode_photo, photo_summary
from contract.paths import REFERENCE_ARTIFACT
from contract.tasks import LABEL, SCORE, Served

ARTIFACT = REFERENCE_ARTIFACT  # made beside the graph by export, logged here by register
ARTIFACT_DIR = ARTIFACT.rsplit("/", 1)[0]
ROWS = 5000  # enough for stable distances, small enough to log with every version
SEED = 0
PREDICTION = SCORE  # P(positive), P(top class), the predicted value, the boxes answered...
PREDICTED_LABEL = LABEL
PREDICTIONS = (PREDICTION, PREDICTED_LABEL)


@dataclass(frozen=True)
class Columns:
    """The drift view's columns by kind (Evidently's data definition)."""

    numerical: list[str]
    categorical: list[str]

    @property
    def features(self) -> list[str]:
        return [c for c in self.numerical + self.categorical if not is_output(c)]

    @property
    def outputs(self) -> list[str]:
        return [c for c in self.numerical + self.categorical if is_output(c)]


def is_output(column: str) -> bool:
    """The score, the label or a task's further output column ("prediction.<name>")."""
    return column in PREDICTIONS or column.startswith(PREDICTION + ".")


def embedding_columns(name: str) -> list[str]:
    return [f"{name}.embedding_{i}" for i in range(EMBEDDING_DIMS)]


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
        elif field.type == "audio":
            numerical += [f"{name}.{part}" for part in AUDIO_VIEW]
        elif field.type == "series":
            numerical += [f"{name}.mean", f"{name}.std", f"{name}.last"]
        else:
            categorical.append(name)
        if embedded(field):
            numerical += embedding_columns(name)
    numerical += [PREDICTION, *spec.task_kind.OUTPUT_VIEW]
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


def _recording(value: Any, field: InputField) -> tuple[float, ...]:
    """(seconds, loudness_dbfs, peak_dbfs) of a recording: its summary as the prediction log
    keeps it, or that of WAV / FLAC bytes (the split) or base64 text, decoded by the
    service's rules within the field's cap; NaN where it is missing or does not decode."""
    if isinstance(value, dict):
        return tuple(float(value.get(part, np.nan)) for part in AUDIO_VIEW)
    try:
        if isinstance(value, str):
            value = base64.b64decode(value, validate=True)
        summary = recording_summary(decode_recording(value, (field.shape or [0])[0]))
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        return (np.nan,) * len(AUDIO_VIEW)
    return tuple(summary[part] for part in AUDIO_VIEW)


def _pixels(values: pd.Series) -> np.ndarray:
    return np.stack([_image(v) for v in values]).astype(np.float32) / 255


def _embeddings(inputs: pd.DataFrame) -> np.ndarray:
    """[N, EMBEDDING_DIMS]: each record's logged INPUT_EMBEDDING; NaN where it has none (a
    request that asked the graph for other outputs) or not of that length."""
    found = np.full((len(inputs), EMBEDDING_DIMS), np.nan)
    if INPUT_EMBEDDING not in inputs:
        return found
    for i, value in enumerate(inputs[INPUT_EMBEDDING].reset_index(drop=True)):
        try:
            vector = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            continue
        if vector.size == EMBEDDING_DIMS:
            found[i] = vector
    return found


def drift_view(spec: ModelSpec, inputs: pd.DataFrame) -> pd.DataFrame:
    """The records' fields as the drift report compares them (no prediction columns); an
    image's embedding from the records' INPUT_EMBEDDING (the graph's, as the log keeps it)."""
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
        elif field.type == "audio":
            heard = [_recording(v, field) for v in values]
            parts = np.array(heard, np.float64).reshape(-1, len(AUDIO_VIEW))
            for i, part in enumerate(AUDIO_VIEW):
                view[f"{name}.{part}"] = parts[:, i]
        elif field.type == "image":
            pixels = _pixels(values) if len(values) else np.zeros((0, 1), np.float32)
            view[f"{name}.mean"] = pixels.mean(axis=1)
            view[f"{name}.std"] = pixels.std(axis=1)
            view[f"{name}.ink"] = (pixels > 0.1).mean(axis=1)
        else:
            view[name] = values.astype(object).where(values.notna(), None)
        if embedded(field):
            vectors = _embeddings(inputs)
            for column, dimension in zip(embedding_columns(name), vectors.T, strict=True):
                view[column] = dimension
    return pd.DataFrame(view, index=range(len(inputs)))


def outputs_view(spec: ModelSpec, predictions: list[dict[str, Any]]) -> pd.DataFrame:
    """The served answers' drift view: the task's `answered` of each (SCORE, LABEL where
    the task serves one, its OUTPUT_VIEW columns); missing values as None."""
    task = spec.task_kind
    names = [PREDICTION, *task.OUTPUT_VIEW]
    if spec.labels_served:
        names.append(PREDICTED_LABEL)
    rows = [task.answered(spec, p) if isinstance(p, dict) else {} for p in predictions]
    frame = pd.DataFrame.from_records(rows, columns=names, index=range(len(rows)))
    return frame.astype({n: float for n in names if n != PREDICTED_LABEL})


def sample(train: pd.DataFrame) -> pd.DataFrame:
    """The seeded rows of the training split that stand for it."""
    if len(train) <= ROWS:
        return train.reset_index(drop=True)
    return train.sample(ROWS, random_state=SEED).reset_index(drop=True)


def reference(
    spec: ModelSpec, rows: pd.DataFrame, result: dict[str, np.ndarray], served: Served
) -> pd.DataFrame:
    """The drift view of `rows` and of the model's answers on them: the graph's outputs
    (`result`) made into answers by the task's `format` as the service does (`served`: its
    threshold), the INPUT_EMBEDDING beside the records as the service logs it."""
    inputs = rows.reset_index(drop=True)
    if INPUT_EMBEDDING in result:
        inputs = inputs.assign(**{INPUT_EMBEDDING: list(np.asarray(result[INPUT_EMBEDDING]))})
    view = drift_view(spec, inputs)
    answers = outputs_view(spec, spec.task_kind.format(result, served))
    return pd.concat([view, answers], axis=1)
