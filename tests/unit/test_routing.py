"""Champion / challenger routing: the registry's experiment tags over the settings, and
sticky assignment by unit."""

from pathlib import Path
from typing import Any

import pytest

from contract.catalog import get_spec
from services.api.routing import Lineup, Routing, bucket, routing_of
from services.api.settings import ServeSettings
from services.api.store import ModelStore, RegistryUnavailable
from services.api.telemetry import ServiceMetrics


def test_the_registry_tags_win_over_the_settings_and_bad_ones_are_ignored() -> None:
    settings = ServeSettings(model="titanic", challenger_mode="shadow", challenger_share=0.1)
    assert routing_of({}, settings) == Routing("shadow", 0.1, "settings")
    assert routing_of({"mode": "split", "share": "0.25"}, settings) == Routing(
        "split", 0.25, "registry"
    )
    assert routing_of({"share": "0.5"}, settings) == Routing("shadow", 0.5, "registry")
    for bad in ({"mode": "half"}, {"share": "1.5"}, {"share": "lots"}, {"share": "nan"}):
        assert routing_of(bad, settings) == Routing("shadow", 0.1, "settings"), bad


class Tagged(ModelStore):
    """A registry whose experiment tags a test sets (None: unreachable)."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__("sqlite:///" + str(tmp_path / "none.db"), tmp_path / "cache", 1.0)
        self.tags: dict[str, str] | None = {}

    def experiment(self, model: str) -> dict[str, str]:
        if self.tags is None:
            raise RegistryUnavailable("down")
        return self.tags

    def fetch(self, model: str, alias: str) -> Any:
        return None


def lineup(tmp_path: Path) -> tuple[Lineup, Tagged, ServiceMetrics]:
    spec = get_spec("titanic")
    metrics = ServiceMetrics(spec.task)
    store = Tagged(tmp_path)
    models = Lineup(spec, ServeSettings(model="titanic", challenger_mode="split"), store, metrics)
    models.champion, models.challenger = "champion", "challenger"  # type: ignore[assignment]
    return models, store, metrics


def test_a_unit_always_lands_on_the_same_side_and_the_share_holds(tmp_path: Path) -> None:
    models, store, metrics = lineup(tmp_path)
    store.tags = {"mode": "split", "share": "0.2"}
    models._route(models._routing())
    units = [f"user-{i}" for i in range(4000)]
    first = [models.assign(u).serving for u in units]
    assert first == [models.assign(u).serving for u in units]  # sticky
    share = first.count("challenger") / len(units)
    assert share == pytest.approx(0.2, abs=0.02)
    # a ramp only adds units to the challenger: who had it keeps it
    store.tags = {"mode": "split", "share": "0.5"}
    models._route(models._routing())
    ramped = [models.assign(u).serving for u in units]
    assert all(r == "challenger" for f, r in zip(first, ramped, strict=True) if f == "challenger")
    assert ramped.count("challenger") / len(units) == pytest.approx(0.5, abs=0.03)
    assert 'serving_challenger_share{model="titanic"} 0.5' in metrics.render()[0].decode()


def test_the_last_routing_holds_while_the_registry_is_down(tmp_path: Path) -> None:
    models, store, _ = lineup(tmp_path)
    store.tags = {"mode": "split", "share": "1"}
    models._route(models._routing())
    store.tags = None
    assert models._routing() == Routing("split", 1.0, "registry")
    assert models.assign("anyone").serving == "challenger"
    store.tags = {"mode": "off"}
    models._route(models._routing())
    assert models.assign("anyone").serving == "champion"


def test_buckets_are_uniform() -> None:
    values = [bucket(str(i)) for i in range(10_000)]
    assert min(values) >= 0 and max(values) < 1
    assert sum(v < 0.5 for v in values) / len(values) == pytest.approx(0.5, abs=0.02)
