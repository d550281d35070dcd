"""The catalog entry's fields as a raw-data schema and a model frame (the tensors the graph
reads: contract/feeds.py).

One convention for missing values everywhere (training, export, serving): a missing number
is NaN (imputed inside the model graph), a missing category or text is the empty string.
"""

import io
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from contract.audio import read_recording
from contract.catalog import InputField, ModelSpec
from contract.tasks.common import series_checks

NUMERIC = ("float", "int")


class SchemaViolation(ValueError):
    """The raw data does not match the catalog entry; the message names each column."""


def _field_checks(field: InputField) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if field.type in NUMERIC:
        checks.append(
            pa.Check(
                lambda s: pd.api.types.is_numeric_dtype(s),
                element_wise=False,
                error="is not numeric",
            )
        )
        if field.type == "int":
            checks.append(pa.Check(lambda s: (s.dropna() % 1 == 0).all(), error="is not integral"))
        if field.min is not None:
            checks.append(pa.Check.ge(field.min))
        if field.max is not None:
            checks.append(pa.Check.le(field.max))
    elif field.type in ("category", "text"):
        checks.append(pa.Check(lambda s: s.dropna().map(type).eq(str).all(), error="is not text"))
        if field.values is not None:
            checks.append(pa.Check.isin(field.values))
    elif field.type == "image":
        size = int(np.prod(field.shape or [0]))
        checks.append(
            pa.Check(
                lambda s: s.map(len).eq(size).all(), error=f"is not {field.shape} uint8 pixels"
            )
        )
    elif field.type == "photo":
        height, width = field.shape or (0, 0)
        checks.append(
            pa.Check(
                lambda value: _photo_fits(value, height, width),
                element_wise=True,
                error=f"is not a PNG or JPEG picture of at most {height}x{width}",
            )
        )
    elif field.type == "audio":
        (max_samples,) = field.shape or [0]
        checks.append(
            pa.Check(
                lambda value: _recording_fits(value, max_samples),
                element_wise=True,
                error=f"is not a 16 kHz mono 16-bit WAV or FLAC of 1 to {max_samples} samples",
            )
        )
    elif field.type == "series":
        checks += series_checks((field.shape or [0])[0], field.min, field.max)
    return checks


def _photo_fits(value: Any, height: int, width: int) -> bool:
    """Encoded PNG or JPEG bytes whose header says at most height x width."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, bytes | bytearray):
        return False
    try:
        with Image.open(io.BytesIO(value), formats=("PNG", "JPEG")) as image:
            return bool(image.height <= height and image.width <= width)
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def _recording_fits(value: Any, max_samples: int) -> bool:
    """Bytes that decode by the service's rules (contract.audio.read_recording)."""
    if not isinstance(value, bytes | bytearray):
        return False
    try:
        read_recording(bytes(value), max_samples)
    except ValueError:
        return False
    return True


def _target_column(spec: ModelSpec) -> pa.Column:
    column: pa.Column = spec.task_kind.target_column(spec)
    return column


def raw_schema(spec: ModelSpec, source: bool = False) -> pa.DataFrameSchema:
    """Columns, types, ranges, categories and nulls of the prepared data.

    Feast-backed projects are checked twice: the source as the package ships it
    (`source=True`: no on-demand features yet) and the point-in-time training set
    (entity key and event time too).
    """
    derived = set(spec.features.derived) if spec.features and source else set()
    columns = {
        name: pa.Column(checks=_field_checks(f), nullable=f.nullable)
        for name, f in spec.fields.items()
        if name not in derived
    }
    columns[spec.target.column] = _target_column(spec)
    if spec.target.time:  # a forecast's origin: one record per time, in order
        columns[spec.target.time] = pa.Column(
            "datetime64[ns]",
            checks=[
                pa.Check(
                    lambda s: s.is_monotonic_increasing,
                    element_wise=False,
                    error="is not in increasing order",
                )
            ],
            unique=True,
            nullable=False,
        )
    if spec.target.item and spec.target.item_name:  # the rated item: id and display name
        columns[spec.target.item] = pa.Column(int, checks=[pa.Check.ge(0)], nullable=False)
        # MovieLens has 5 movies without a title: served with an empty name
        columns[spec.target.item_name] = pa.Column(str, nullable=True)
    elif spec.target.item:  # a searched document's id
        columns[spec.target.item] = pa.Column(str, unique=True, nullable=False)
    if spec.features and not source:
        columns[spec.features.entity] = pa.Column(str, unique=True, nullable=False)
        columns["event_timestamp"] = pa.Column("datetime64[ns, UTC]", nullable=False)
    columns["split"] = pa.Column(str, checks=[pa.Check.isin(["train", "test"])], required=False)
    return pa.DataFrameSchema(columns, strict=True, name=spec.key)


def _describe_failure(column: object, check: str, case: object, spec: ModelSpec) -> str:
    if check == "column_in_schema":  # pandera puts the offending column in failure_case
        return (
            f"- unexpected column {case!r}: not a field, the target or in `drop` "
            f"of models.{spec.key} in params.yaml"
        )
    if check == "column_in_dataframe":
        return f"- column {case!r} is missing from the data"
    return f"- column {column!r}: {check} (e.g. {case!r})"


def validate_raw(frame: pd.DataFrame, spec: ModelSpec, source: bool = False) -> pd.DataFrame:
    """Raise SchemaViolation naming every failing column and check."""
    try:
        return raw_schema(spec, source).validate(frame, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        structural = cases["check"].isin(["column_in_schema", "column_in_dataframe"])
        cases = cases[structural | ~cases.duplicated(["column", "check"])]  # one example each
        lines = [
            _describe_failure(row.column, str(row.check), row.failure_case, spec)
            for row in cases.itertuples()
        ]
        raise SchemaViolation(
            f"raw data for {spec.key!r} violates its schema:\n" + "\n".join(lines)
        ) from exc


def model_frame(frame: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The model's inputs in catalog order: numbers as float32, text with '' for missing."""
    out: dict[str, Any] = {}
    for name, field in spec.fields.items():
        column = frame[name]
        if field.type in NUMERIC:
            out[name] = pd.to_numeric(column).astype("float32")
        elif field.type in ("image", "photo", "series", "audio"):
            out[name] = column
        else:
            out[name] = column.fillna("").astype(object)
    return pd.DataFrame(out, index=frame.index)


def encode_target(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The target as the task scores it (contract/tasks/<task>.py `encode_target`): 0/1,
    a class index, a value or a series [N, horizon]."""
    return spec.task_kind.encode_target(frame[spec.target.column], spec)
