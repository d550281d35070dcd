"""Segment profiles of a segmentation (task: clustering), in the raw fields' own units.

Export computes them on the training split and stores them in the graph's metadata; the
model card shows them and the service answers each record with its segment's profile.
"""

from typing import Any

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec
from contract.tasks.clustering import segment_names
from pipelines.schema import NUMERIC


def profiles(spec: ModelSpec, frame: pd.DataFrame, labels: np.ndarray) -> list[dict[str, Any]]:
    """Per segment: its share of customers, the mean of each number, the share of each
    value of each category, and the share of the profiled target value."""
    names = segment_names(int(labels.max()) + 1 if len(labels) else 0)
    out = []
    for index, name in enumerate(names):
        rows = frame[labels == index]
        profile: dict[str, Any] = {"segment": name, "share": round(len(rows) / len(frame), 4)}
        for field, spec_field in spec.fields.items():
            column = rows[field]
            if spec_field.type in NUMERIC:
                profile[field] = round(float(pd.to_numeric(column).mean()), 2)
            else:  # the share of each value, most common first
                counts = column.fillna("").value_counts(normalize=True)
                profile[field] = {str(k): round(float(v), 3) for k, v in counts.items()}
        target = spec.target
        if target.positive is not None:
            share = (rows[target.column] == target.positive).mean()
            profile[f"{target.column}_rate"] = round(float(share), 4)
        out.append(profile)
    return out
