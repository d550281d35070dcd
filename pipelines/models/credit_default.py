"""Credit default: class-weighted boosted trees, decision threshold tuned for a stated cost.

Approving an applicant who then defaults (a false negative) costs `cost_false_negative`
times as much as turning down one who would have repaid. The threshold that minimises the
expected cost is chosen by cross-validation on the training split and is part of the
exported graph, so the served label is the cost-optimal decision.
"""

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, make_scorer
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import threshold_tuned_trees
from pipelines.flavors import sklearn as FLAVOR
from pipelines.timeline import Timeline, anchor, entity_ids, stamp

__all__ = ["FLAVOR", "build", "timeline"]

PROFILE = ["Seniority", "Home", "Age", "Marital", "Records", "Job", "Expenses"]
MONEY = {"Income": 0.01, "Assets": 0.02, "Debt": -0.03}  # monthly drift of each amount


def negative_cost(y_true: np.ndarray, y_pred: np.ndarray, cost_false_negative: float) -> float:
    """Minus the cost per applicant: FN cost `cost_false_negative`, FP cost 1."""
    _, fp, fn, _ = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return -float(cost_false_negative * fn + fp) / len(y_true)


def build(spec: ModelSpec) -> Pipeline:
    params = dict(spec.params)
    cost = params.pop("cost_false_negative")
    return threshold_tuned_trees(spec, params, make_scorer(negative_cost, cost_false_negative=cost))


def timeline(source: pd.DataFrame, spec: ModelSpec) -> Timeline:
    """Applications spread over the year before `observed_at`, with monthly profiles.

    Each source row is an application: its date is spread deterministically over the 365
    days before `observed_at`; the profile at that date is the row as given. Monthly
    profiles before and after it drift (income up 1% a month, assets up 2%, debt paid down
    3%), so a join that ignored the application date would read the wrong amounts.
    """
    assert spec.features is not None
    key = spec.features.entity
    ids = pd.Series(entity_ids("A", len(source)), index=source.index)
    days = (np.arange(len(source)) * 7919) % 365  # a fixed spread (7919 is prime)
    applied = anchor(spec) - pd.to_timedelta(days + 1, unit="D")
    feats = spec.features
    rows = []
    for offset in range(-feats.history_months, feats.followup_months + 1):
        snap = source[PROFILE].assign(**{key: ids.to_numpy()})
        for column, rate in MONEY.items():
            snap[column] = (source[column] * (1 + rate) ** offset).round(0)
        snap["event_timestamp"] = applied + pd.Timedelta(days=30 * offset)
        rows.append(snap)
    monthly = stamp(pd.concat(rows, ignore_index=True))
    monthly = monthly[[key, "event_timestamp", *PROFILE, *MONEY, "created"]]
    labels = source[[*feats.request, spec.target.column]].assign(
        **{key: ids.to_numpy(), "event_timestamp": applied.to_numpy()}
    )
    columns = [key, "event_timestamp", *feats.request, spec.target.column]
    return Timeline(
        {"applicant_monthly": monthly.sort_values("event_timestamp", kind="stable")},
        labels[columns].reset_index(drop=True),
    )
