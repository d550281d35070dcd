"""Champion against challenger on outcomes: intervals, the spending of the error budget,
the verdicts."""

import numpy as np
import pytest

from contract.catalog import ModelSpec, get_spec
from services.api.feedback import Labelled
from services.drift import experiment
from services.drift.experiment import higher_is_better, metric_of, spent

TITANIC = get_spec("titanic")


def arm(version: str, alias: str, skill: float, n: int, seed: int) -> list[Labelled]:
    """Records whose P(survived) separates the outcomes as well as `skill` says (0: noise)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    p = np.clip(0.5 + skill * (truth - 0.5) + rng.normal(0, 0.25, n), 0.001, 0.999)
    names = ["died", "survived"]

    def record(v: float, t: int) -> Labelled:
        prediction = {"probability": float(v), "label": names[int(v >= 0.5)]}
        return Labelled(1.0, version, alias, prediction, names[t], 2.0)

    return [record(v, t) for v, t in zip(p, truth, strict=True)]


def compare(
    spec: ModelSpec,
    champion: list[Labelled],
    challenger: list[Labelled],
    fraction: float,
    min_records: int,
) -> experiment.Comparison:
    """Fewer resamples than the service's: the intervals a test needs, in seconds."""
    return experiment.compare(spec, champion, challenger, fraction, min_records, resamples=60)


def test_the_budget_is_spent_late_and_whole_at_the_end() -> None:
    looks = [spent(t) for t in (0.1, 0.25, 0.5, 0.75, 1.0)]
    assert looks == sorted(looks) and looks[-1] == pytest.approx(0.05)
    assert looks[0] < 1e-6 and looks[1] < 1e-3  # an early look needs an overwhelming gap


def test_a_worse_challenger_is_found_worse_and_an_equal_one_is_not() -> None:
    champion = arm("1", "champion", 0.6, 200, seed=1)
    worse = compare(TITANIC, champion, arm("2", "challenger", 0.0, 200, seed=2), 1.0, 100)
    assert worse.metric == "roc_auc" and worse.higher_is_better
    assert worse.verdict == "worse" and worse.high < 0 < worse.champion.value - 0.5
    assert worse.champion.low < worse.champion.value < worse.champion.high
    same = compare(TITANIC, champion, arm("2", "challenger", 0.6, 200, seed=3), 1.0, 100)
    assert same.verdict == "inconclusive" and same.low < 0 < same.high
    better = compare(TITANIC, arm("1", "champion", 0.1, 200, seed=4), champion, 1.0, 100)
    assert better.verdict == "better"


def test_an_early_look_needs_more_and_too_few_records_decide_nothing() -> None:
    champion = arm("1", "champion", 0.6, 200, seed=1)
    slightly = arm("2", "challenger", 0.45, 200, seed=2)
    late = compare(TITANIC, champion, slightly, 1.0, 100)
    early = compare(TITANIC, champion, slightly, 0.2, 100)
    assert early.level > late.level and early.high - early.low > late.high - late.low
    few = compare(TITANIC, champion[:50], slightly[:50], 1.0, 100)
    assert few.verdict == "too_few" and np.isnan(few.low)
    again = compare(TITANIC, champion, slightly, 1.0, 100)
    assert (again.low, again.high) == (late.low, late.high)  # seeded: the same interval


def test_the_decision_metric_and_its_direction() -> None:
    assert metric_of(TITANIC, ["accuracy", "roc_auc"]) == "roc_auc"  # the gate metric
    assert metric_of(get_spec("movie_recs"), ["mrr", "precision_at_10"]) == "mrr"
    assert not higher_is_better(get_spec("energy_forecast"), "mape")
    assert not higher_is_better(TITANIC, "log_loss")
    assert higher_is_better(get_spec("movie_recs"), "precision_at_10")
