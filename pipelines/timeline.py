"""Deterministic event times for data sets that have none (the Feast-backed projects).

A source like Telco churn is one row per customer, observed once. A feature store needs
history: rows with event times, some of which a training join must NOT see. The catalog
modules turn their source into such a timeline with these helpers; feature_repo/README.md
documents each derivation. Everything here is a pure function of the source and the
catalog entry, so `dvc repro` rebuilds the same tables byte for byte.
"""

from typing import NamedTuple

import pandas as pd

from contract.catalog import ModelSpec

# The snapshot job runs an hour after the month's cut-off; corrections land days later.
SNAPSHOT_LAG = pd.Timedelta(hours=1)
CORRECTION_LAG = pd.Timedelta(days=2)


class Timeline(NamedTuple):
    """Feature tables (the offline store's sources) and the labelled entity rows."""

    tables: dict[str, pd.DataFrame]  # file name stem -> rows with event_timestamp, created
    labels: pd.DataFrame  # join key, event_timestamp, request fields, target


def anchor(spec: ModelSpec) -> pd.Timestamp:
    """`features.observed_at` as a UTC timestamp."""
    assert spec.features is not None
    return pd.Timestamp(spec.features.observed_at, tz="UTC")


def entity_ids(prefix: str, count: int) -> list[str]:
    """Ids in the source's row order: C00001, C00002, ..."""
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


def stamp(table: pd.DataFrame) -> pd.DataFrame:
    """Add `created`: when the snapshot job wrote each row."""
    return table.assign(created=table["event_timestamp"] + SNAPSHOT_LAG)


def restate(table: pd.DataFrame, every: int, column: str, factor: float) -> pd.DataFrame:
    """Billing corrections: every `every`-th row first issued with `column` * factor.

    The wrong row and its correction share the event time; the correction is created later,
    so a point-in-time join must break the tie by `created` to get the true value back.
    """
    picked = table.iloc[::every]
    wrong = picked.assign(**{column: (picked[column] * factor).round(2)})
    fixed = picked.assign(created=picked["created"] + CORRECTION_LAG)
    rest = table.drop(index=picked.index)
    out = pd.concat([rest, wrong, fixed], ignore_index=True)
    return out.sort_values(["event_timestamp", "created"], kind="stable", ignore_index=True)
