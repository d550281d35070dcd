"""Shared building blocks for tabular catalog modules."""

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from skl2onnx.sklapi import CastTransformer
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder

from pipelines.catalog import ModelSpec
from pipelines.schema import NUMERIC


def columns(spec: ModelSpec, kinds: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    skip = set(exclude)
    return [n for n, f in spec.fields.items() if f.type in set(kinds) and n not in skip]


def preprocessor(
    spec: ModelSpec,
    exclude: Iterable[str] = (),
    min_frequency: int = 10,
    extra: Sequence[tuple[str, Any, Any]] = (),
) -> ColumnTransformer:
    """Median-imputed numbers and one-hot categories (rare ones pooled, unknown ones ignored)."""
    steps: list[tuple[str, Any, Any]] = [
        ("num", SimpleImputer(strategy="median"), columns(spec, NUMERIC, exclude)),
        (
            "cat",
            OneHotEncoder(
                handle_unknown="ignore", min_frequency=min_frequency, sparse_output=False
            ),
            columns(spec, ["category"], exclude),
        ),
    ]
    return ColumnTransformer([*steps, *extra], sparse_threshold=0.0)


def to_float32() -> CastTransformer:
    """Trees see float32 natively too, so ONNX (float32 tree ensembles) matches exactly."""
    return CastTransformer(dtype=np.float32)
