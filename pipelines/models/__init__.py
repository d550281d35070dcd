"""The catalog's modules: one per `models:` entry in params.yaml, each a `Project`."""

from types import ModuleType
from typing import Any, Protocol, cast

from pipelines.catalog import ModelSpec, UnknownModelError
from pipelines.flavors import Flavor
from pipelines.models import churn, fashion_cnn, house_prices, review_sentiment, titanic


class Project(Protocol):
    """What a catalog module provides: its flavor and its (unfitted) estimator."""

    FLAVOR: Flavor

    def build(self, spec: ModelSpec) -> Any: ...


MODELS: dict[str, Project] = {
    "house_prices": cast(Project, house_prices),
    "titanic": cast(Project, titanic),
    "churn": cast(Project, churn),
    "review_sentiment": cast(Project, review_sentiment),
    "fashion_cnn": cast(Project, fashion_cnn),
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
