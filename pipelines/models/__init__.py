"""The catalog's modules: one per `models:` entry in params.yaml, each a `Project`."""

from types import ModuleType
from typing import Any, Protocol, cast

import pandas as pd

from pipelines.catalog import ModelSpec, UnknownModelError
from pipelines.flavors import Flavor
from pipelines.models import (
    churn,
    credit_default,
    fashion_cnn,
    house_prices,
    review_sentiment,
    titanic,
)
from pipelines.timeline import Timeline


class Project(Protocol):
    """What a catalog module provides: its flavor and its (unfitted) estimator."""

    FLAVOR: Flavor

    def build(self, spec: ModelSpec) -> Any: ...


class FeatureProject(Project, Protocol):
    """A Feast-backed module also derives the timeline its source lacks."""

    def timeline(self, source: pd.DataFrame, spec: ModelSpec) -> Timeline: ...


MODELS: dict[str, Project] = {
    "house_prices": cast(Project, house_prices),
    "titanic": cast(Project, titanic),
    "churn": cast(Project, churn),
    "review_sentiment": cast(Project, review_sentiment),
    "fashion_cnn": cast(Project, fashion_cnn),
    "credit_default": cast(Project, credit_default),
}


def get_project(key: str) -> Project:
    if key not in MODELS:
        raise UnknownModelError(key, sorted(MODELS))
    return MODELS[key]


def is_project(module: ModuleType) -> bool:
    """Runtime check of the Project protocol (used by the tests on every entry)."""
    return callable(getattr(module, "build", None)) and isinstance(
        getattr(module, "FLAVOR", None), Flavor
    )


def get_feature_project(key: str) -> FeatureProject:
    """The module of a Feast-backed entry, which must define `timeline`."""
    project = get_project(key)
    if not callable(getattr(project, "timeline", None)):
        raise TypeError(f"pipelines/models/{key}.py has a features: entry but no timeline()")
    return cast(FeatureProject, project)
