"""The catalog entry's fields as a raw-data schema, a model frame and ONNX tensors.

One convention for missing values everywhere (training, export, serving): a missing number
is NaN (imputed inside the model graph), a missing category or text is the empty string.
"""

from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from pipelines.catalog import InputField, ModelSpec

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
    elif field.type == "series":
        checks += _series_checks((field.shape or [0])[0], field.min, field.max)
    return checks


def _series_checks(length: int, low: float | None, high: float | None) -> list[pa.Check]:
    """Each cell a sequence of `length` finite numbers within [low, high]."""

    def bounded(values: Any) -> bool:
        array = np.asarray(values, dtype=np.float64)
        return bool(
            array.shape == (length,)
            and np.isfinite(array).all()
            and (low is None or array.min() >= low)
            and (high is None or array.max() <= high)
        )

    bounds = "".join(f" {op} {v:g}" for op, v in ((">=", low), ("<=", high)) if v is not None)
    return [pa.Check(bounded, element_wise=True, error=f"is not {length} finite numbers{bounds}")]


def _target_column(spec: ModelSpec) -> pa.Column:
    target = spec.target
    if spec.task == "regression":
        checks = [pa.Check.gt(0)] if target.transform == "log" else []
        return pa.Column(checks=checks, nullable=False)
    if spec.task == "forecast":  # the series of the horizon after the origin
        return pa.Column(checks=_series_checks(target.horizon or 0, None, None), nullable=False)
    if spec.task == "recommendation":  # a rating on the source's scale
        return pa.Column(float, checks=[pa.Check.ge(0)], nullable=False, coerce=True)
    if spec.task in ("binary", "anomaly", "clustering", "retrieval"):
        return pa.Column(
            checks=[
                pa.Check(lambda s: s.nunique() == 2, error="is not two-valued"),
                pa.Check(
                    lambda s: (s == target.positive).any(),
                    error=f"never takes the positive value {target.positive!r}",
                ),
            ],
            nullable=False,
        )
    # multiclass: the class names themselves (penguins' species) or their indices in label
    # order (Fashion-MNIST's 0-9)
    names = spec.class_names
    return pa.Column(
        checks=[
            pa.Check(
                lambda s: s.isin(names) | s.isin(range(len(names))),
                error=f"is neither one of {names} nor its index",
            )
        ],
        nullable=False,
    )


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
        elif field.type in ("image", "series"):
            out[name] = column
        else:
            out[name] = column.fillna("").astype(object)
    return pd.DataFrame(out, index=frame.index)


def encode_target(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """0/1 for binary, anomaly, clustering (its profiled value) and retrieval (its relevance
    label), class index for
    multiclass, float for regression, [N, horizon] for a forecast."""
    y = frame[spec.target.column]
    if spec.task in ("binary", "anomaly", "clustering", "retrieval"):
        return (y == spec.target.positive).to_numpy(dtype=np.int64)
    if spec.task == "multiclass":
        if y.dtype == object or isinstance(y.dtype, pd.StringDtype):  # class names
            return y.map({name: i for i, name in enumerate(spec.class_names)}).to_numpy(np.int64)
        return y.to_numpy(dtype=np.int64)
    if spec.task == "forecast":  # [N, horizon]
        return series(y)
    return y.to_numpy(dtype=np.float64)


def images(frame: pd.DataFrame, name: str, field: InputField) -> np.ndarray:
    """uint8 pixels [N, H, W] from the raw bytes column."""
    shape = field.shape or []
    return np.frombuffer(b"".join(frame[name]), np.uint8).reshape(len(frame), *shape)


def series(column: pd.Series) -> np.ndarray:
    """A column of equal-length sequences as one float64 array [N, length]."""
    if not len(column):
        return np.zeros((0, 0))
    return np.stack([np.asarray(v, dtype=np.float64) for v in column])


def onnx_feeds(frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """One input tensor per field, in the shapes and dtypes of the exported graph."""
    frame = model_frame(frame, spec)
    feeds: dict[str, np.ndarray] = {}
    for name, field in spec.fields.items():
        if field.type in NUMERIC:
            feeds[name] = frame[[name]].to_numpy(dtype=np.float32)
        elif field.type == "image":
            feeds[name] = images(frame, name, field)
        elif field.type == "series":
            feeds[name] = series(frame[name]).astype(np.float32).reshape(len(frame), -1)
        else:
            feeds[name] = frame[[name]].to_numpy(dtype=object)
    return feeds
