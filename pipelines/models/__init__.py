"""The catalog's modules: one per `models:` entry in params.yaml, each a `Project`, found by
its key (pipelines/models/<key>.py): adding a project is its module and its entry, nothing
to register here."""

import importlib
from types import ModuleType
from typing import Any, Protocol, cast

import pandas as pd

from contract.catalog import ModelSpec, UnknownModelError, load_catalog
from pipelines.flavors import Flavor
from pipelines.timeline import Timeline


class Project(Protocol):
    """What a catalog module provides: its flavor and its (unfitted) estimator.

    A module may also define `records(source, spec) -> DataFrame`, the source reshaped into
    the model's records before the schema check (a time series cut into forecast origins).
    """

    FLAVOR: Flavor

    def build(self, spec: ModelSpec) -> Any: ...


class FeatureProject(Project, Protocol):
    """A Feast-backed module also derives the timeline its source lacks."""

    def timeline(self, source: pd.DataFrame, spec: ModelSpec) -> Timeline: ...


def get_project(key: str) -> Project:
    """pipelines/models/<key>.py, the module of the catalog entry `key`."""
    try:
        module = importlib.import_module(f"pipelines.models.{key}")
    except ModuleNotFoundError as exc:
        if exc.name != f"pipelines.models.{key}":
            raise  # the module exists and imports something that is missing
        raise UnknownModelError(key, sorted(load_catalog())) from exc
    if not is_project(module):
        raise TypeError(f"pipelines/models/{key}.py defines no FLAVOR and build(spec)")
    return cast(Project, module)


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
