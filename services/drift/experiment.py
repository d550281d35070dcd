"""Champion against challenger on outcomes: each arm's metric with a confidence interval,
and a group-sequential decision on their difference.

The metric is the model's gate metric where the task measures it on labelled traffic (else
its first floor metric measured, else the first metric), computed by the task's own
`performance`. Intervals are bootstrap percentiles (scipy.stats.bootstrap, seeded: the same
records give the same interval). The experiment is looked at again and again (each step of
a canary's ramp), so each look spends part of the error budget `alpha` by the Lan-DeMets
O'Brien-Fleming function of the information fraction t (the share of the planned labelled
records seen): alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)). Early looks need an
overwhelming difference, the last one almost the plain test; the intervals of the
difference are at the level each look's spent increment allows (a conservative use of the
spending function: no look-to-look correlation is credited).
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contract.catalog import ModelSpec
from services.api.feedback import Labelled

ALPHA = 0.05
RESAMPLES = 200  # each draws both arms: 2 x 200 runs of the task's metrics
LOWER_IS_BETTER = ("rmse", "mae", "mape", "log_loss", "brier", "rmse_log", "cost_per_case")


def spent(fraction: float, alpha: float = ALPHA) -> float:
    """The error budget spent by information fraction `fraction` (O'Brien-Fleming type)."""
    from scipy.stats import norm

    t = min(max(fraction, 1e-9), 1.0)
    return float(2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(t)))


@dataclass(frozen=True)
class Arm:
    version: str
    alias: str
    records: int
    value: float  # nan: not measurable on these records
    low: float  # 95% bootstrap interval
    high: float


@dataclass(frozen=True)
class Comparison:
    """The challenger against the champion on one metric; `difference` is challenger minus
    champion, so with `higher_is_better` a positive one favours the challenger."""

    model: str
    metric: str
    higher_is_better: bool
    champion: Arm
    challenger: Arm
    difference: float
    low: float  # the interval of the difference at this look's level
    high: float
    level: float  # its confidence level: 1 - the alpha this look spends
    fraction: float  # information fraction of this look
    verdict: str  # "worse", "better", "inconclusive", or "too_few"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_of(spec: ModelSpec, measured: Sequence[str]) -> str:
    """The metric an experiment decides on: the gate metric, a floor metric, or the first."""
    for name in (spec.gate_metric, *spec.floors, *sorted(measured)):
        if name in measured:
            return name
    raise ValueError(f"{spec.key}: no metric on labelled traffic")


def higher_is_better(spec: ModelSpec, metric: str) -> bool:
    if metric in spec.floors:
        return spec.floors[metric].min is not None
    return not any(metric == n or metric.startswith(n + "_") for n in LOWER_IS_BETTER)


Statistic = Callable[[Sequence[Labelled]], float]


def statistic(spec: ModelSpec, metric: str) -> Statistic:
    def value(records: Sequence[Labelled]) -> float:
        predictions = [r.prediction for r in records]
        measured = spec.task_kind.performance(spec, predictions, [r.outcome for r in records])
        return float(measured.get(metric, np.nan))

    return value


def arms_and_gap(
    champion: Sequence[Labelled],
    challenger: Sequence[Labelled],
    value: Statistic,
    resamples: int,
) -> np.ndarray:
    """The bootstrap distribution [3, resamples] of (champion, challenger, challenger -
    champion): each arm resampled on its own (scipy.stats.bootstrap, seeded)."""
    from scipy.stats import bootstrap

    def both(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        ours = value([champion[a] for a in i])
        theirs = value([challenger[b] for b in j])
        return np.array([ours, theirs, theirs - ours])

    result = bootstrap(
        (np.arange(len(champion)), np.arange(len(challenger))), both, n_resamples=resamples,
        method="percentile", vectorized=False, paired=False,
        random_state=np.random.default_rng(0),
    )  # fmt: skip
    return np.asarray(result.bootstrap_distribution)


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The percentile interval at `level` of a bootstrap distribution (NaN if undefined)."""
    if np.isnan(values).any():
        return np.nan, np.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    spec: ModelSpec,
    champion: Sequence[Labelled],
    challenger: Sequence[Labelled],
    fraction: float,
    min_records: int,
    alpha: float = ALPHA,
    previous: float = 0.0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """The arms on the decision metric, and the verdict of this look at information
    `fraction` (`previous`: the fraction of the look before, whose spending is done)."""
    both = [*champion, *challenger]
    measured = spec.task_kind.performance(
        spec, [r.prediction for r in both], [r.outcome for r in both]
    )
    metric = metric_of(spec, list(measured))
    better_up = higher_is_better(spec, metric)
    value = statistic(spec, metric)
    look_alpha = max(spent(fraction, alpha) - spent(previous, alpha), 1e-12)
    level = 1 - look_alpha
    nan = (np.nan, np.nan)
    bounds, gap, verdict = [nan, nan], nan, "too_few"
    if min(len(champion), len(challenger)) >= 2:
        distribution = arms_and_gap(champion, challenger, value, resamples)
        bounds = [interval(distribution[0], 0.95), interval(distribution[1], 0.95)]
        if min(len(champion), len(challenger)) >= min_records:
            gap = interval(distribution[2], level)
            verdict = _verdict(*gap, better_up)
    arms = [
        Arm(records[0].version if records else "", alias, len(records),
            value(records) if len(records) >= 2 else np.nan, *bound)
        for records, alias, bound in zip(
            (champion, challenger), ("champion", "challenger"), bounds, strict=True
        )
    ]  # fmt: skip
    return Comparison(
        spec.key, metric, better_up, arms[0], arms[1], arms[1].value - arms[0].value, *gap,
        level, fraction, verdict,
    )  # fmt: skip


def _verdict(low: float, high: float, better_up: bool) -> str:
    if np.isnan(low) or np.isnan(high):
        return "inconclusive"
    if (high < 0) if better_up else (low > 0):
        return "worse"
    if (low > 0) if better_up else (high < 0):
        return "better"
    return "inconclusive"
