"""Human activity recognition: standing, walking, running or badminton, from 10 s of a smart
watch's 3-D accelerometer and 3-D gyroscope (UEA's BasicMotions, as sktime ships it).

`records` names the source's six dimensions after the catalog's series fields (the file
orders them accelerometer x, y, z then gyroscope x, y, z); a small 1-D CNN with global
average pooling classifies a window (pipelines/estimators/series_classifier.py).
"""

import pandas as pd
from torch import nn

from contract.catalog import ModelSpec
from pipelines.estimators.series_classifier import SeriesClassifier
from pipelines.flavors import torch as FLAVOR

__all__ = ["FLAVOR", "build", "records"]


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The source's dim_0 ... dim_5 under the fields' names, in the catalog's order."""
    names = {f"dim_{i}": name for i, name in enumerate(spec.fields)}
    if set(names) - set(source.columns) or f"dim_{len(names)}" in source:
        raise ValueError(f"the source's dimensions are not the {len(names)} series fields")
    return source.rename(columns=names)


def _block(c_in: int, c_out: int, width: int) -> list[nn.Module]:
    conv = nn.Conv1d(c_in, c_out, width, padding=width // 2, bias=False)
    return [conv, nn.BatchNorm1d(c_out), nn.ReLU()]


def build(spec: ModelSpec) -> SeriesClassifier:
    """[N, 6, L] -> three convolutions (widths 7, 5, 3) -> the average over time -> logits."""
    c1, c2, c3 = spec.params["channels"]
    net = nn.Sequential(
        *_block(len(spec.fields), c1, 7),
        *_block(c1, c2, 5),
        *_block(c2, c3, 3),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Dropout(spec.params["dropout"]),
        nn.Linear(c3, len(spec.class_names)),
    )
    return SeriesClassifier(net, spec.params)
