"""The timelines derived for Feast-backed projects, whose sources have no event times."""

import math
from functools import cache

import numpy as np
import pandas as pd
import pytest

from pipelines.models import churn, credit_default
from pipelines.schema import validate_raw
from pipelines.sources import load_source
from pipelines.timeline import CORRECTION_LAG, SNAPSHOT_LAG, Timeline, anchor, entity_ids, restate
from tests.conftest import CATALOG

DERIVE = {"churn": churn.timeline, "credit_default": credit_default.timeline}
TABLE = {"churn": "customer_monthly", "credit_default": "applicant_monthly"}
TS = "event_timestamp"


@cache
def source(key: str) -> pd.DataFrame:
    """The source as prepare hands it to `timeline` (validated, dropped columns gone)."""
    spec = CATALOG[key]
    frame = load_source(spec.source)
    return validate_raw(frame.drop(columns=[c for c in spec.drop if c in frame]), spec, source=True)


@cache
def derived(key: str) -> Timeline:
    return DERIVE[key](source(key), CATALOG[key])


def snapshot_at(table: pd.DataFrame, key: str, times: pd.Series) -> pd.DataFrame:
    """Per entity, its row at the given event time (the latest `created` if restated)."""
    at = table.merge(times.rename(TS).rename_axis(key).reset_index(), on=[key, TS])
    return at.sort_values("created").groupby(key).tail(1).set_index(key).loc[times.index]


def test_entity_ids_are_zero_padded_in_row_order() -> None:
    assert entity_ids("C", 3) == ["C00001", "C00002", "C00003"]


def test_restate_pairs_a_wrong_row_with_a_later_correction() -> None:
    times = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(range(5), unit="D")
    table = pd.DataFrame({"id": list("abcde"), TS: times, "x": [10.0, 20.0, 30.0, 40.0, 50.0]})
    out = restate(table.assign(created=table[TS] + SNAPSHOT_LAG), every=2, column="x", factor=0.9)
    assert len(out) == 8  # rows 0, 2, 4 issued twice
    tied = out[out.duplicated(["id", TS], keep=False)].sort_values(["id", "created"])
    wrong, fixed = tied.iloc[::2].reset_index(drop=True), tied.iloc[1::2].reset_index(drop=True)
    assert wrong["id"].tolist() == fixed["id"].tolist() == ["a", "c", "e"]
    assert ((fixed["created"] - wrong["created"]) == CORRECTION_LAG).all()
    assert fixed["x"].tolist() == [10.0, 30.0, 50.0] and wrong["x"].tolist() == [9.0, 27.0, 45.0]
    assert out[[TS, "created"]].apply(tuple, axis=1).is_monotonic_increasing


@pytest.mark.parametrize("key", sorted(DERIVE))
def test_derivation_is_deterministic(key: str) -> None:
    again = DERIVE[key](source(key), CATALOG[key])
    pd.testing.assert_frame_equal(again.labels, derived(key).labels)
    pd.testing.assert_frame_equal(again.tables[TABLE[key]], derived(key).tables[TABLE[key]])


@pytest.mark.parametrize(("key", "prefix"), [("churn", "C"), ("credit_default", "A")])
def test_labels_are_the_source_rows_in_order(key: str, prefix: str) -> None:
    spec, labels = CATALOG[key], derived(key).labels
    assert spec.features is not None
    assert labels[spec.features.entity].tolist() == entity_ids(prefix, len(source(key)))
    target = spec.target.column
    assert labels[target].tolist() == source(key)[target].tolist()
    request = source(key)[spec.features.request].reset_index(drop=True)
    pd.testing.assert_frame_equal(labels[spec.features.request], request)
    table = derived(key).tables[TABLE[key]]
    assert (table["created"] - table[TS] >= SNAPSHOT_LAG).all()


def test_churn_snapshot_at_observed_at_is_the_source_row() -> None:
    spec, labels = CATALOG["churn"], derived("churn").labels
    assert (labels[TS] == anchor(spec)).all()
    times = labels.set_index("customer_id")[TS]
    at = snapshot_at(derived("churn").tables["customer_monthly"], "customer_id", times)
    expected = source("churn")[list(at.columns.intersection(list(spec.fields)))]
    pd.testing.assert_frame_equal(
        at[expected.columns].reset_index(drop=True), expected.reset_index(drop=True)
    )


def test_churners_stop_at_observed_at_and_stayers_go_on() -> None:
    spec, table = CATALOG["churn"], derived("churn").tables["customer_monthly"]
    assert spec.features is not None
    stays = pd.Series(
        (source("churn")["churn"] == "No").to_numpy(), index=entity_ids("C", len(source("churn")))
    )
    after = table[table[TS] > anchor(spec)].groupby("customer_id")[TS].nunique()
    assert not stays[~stays].index.isin(after.index).any()
    assert (after.reindex(stays[stays].index) == spec.features.followup_months).all()


def test_churn_tenure_counts_months_and_is_never_negative() -> None:
    spec, table = CATALOG["churn"], derived("churn").tables["customer_monthly"]
    t0 = anchor(spec)
    offset = (table[TS].dt.year - t0.year) * 12 + table[TS].dt.month - t0.month
    tenure = source("churn")["tenure"].set_axis(entity_ids("C", len(source("churn"))))
    assert (table["tenure"] == tenure.loc[table["customer_id"]].to_numpy() + offset).all()
    assert (table["tenure"] >= 0).all() and offset.min() == -spec.features.history_months  # type: ignore[union-attr]
    assert table.loc[table["tenure"] == 0, "total_charges"].isna().all()


def test_churn_total_charges_known_once_billed() -> None:
    table = derived("churn").tables["customer_monthly"]
    assert table.loc[table["tenure"] > 0, "total_charges"].notna().all()


def test_churn_restated_rows_come_in_pairs() -> None:
    table = derived("churn").tables["customer_monthly"]
    tied = table[table.duplicated(["customer_id", TS], keep=False)].sort_values("created")
    groups = tied.groupby(["customer_id", TS])
    assert (groups.size() == 2).all()
    assert len(groups) == math.ceil((len(table) - len(groups)) / 97)  # every 97th row once
    assert (groups["created"].agg(lambda c: c.iloc[1] - c.iloc[0]) == CORRECTION_LAG).all()
    totals = groups["total_charges"].agg(["first", "last"]).dropna()
    assert (totals["first"] == (totals["last"] * 0.9).round(2)).all() and len(totals) > 500


def test_credit_applications_spread_over_the_year_before() -> None:
    spec, labels = CATALOG["credit_default"], derived("credit_default").labels
    days = (anchor(spec) - labels[TS]).dt.days
    assert set(days) == set(range(1, 366))  # every day of the year, none after observed_at


def test_credit_profile_at_application_is_the_source_row() -> None:
    labels = derived("credit_default").labels
    table = derived("credit_default").tables["applicant_monthly"]
    at = snapshot_at(table, "applicant_id", labels.set_index("applicant_id")[TS])
    columns = credit_default.PROFILE + list(credit_default.MONEY)
    pd.testing.assert_frame_equal(
        at[columns].reset_index(drop=True), source("credit_default")[columns].reset_index(drop=True)
    )


def test_credit_profiles_every_30_days_drift_as_stated() -> None:
    spec, table = CATALOG["credit_default"], derived("credit_default").tables["applicant_monthly"]
    assert spec.features is not None
    table = table.sort_values(["applicant_id", TS])
    steps = table.groupby("applicant_id")[TS].diff().dropna()
    assert (steps == pd.Timedelta(days=30)).all()
    span = spec.features.history_months + spec.features.followup_months + 1
    assert (table.groupby("applicant_id").size() == span).all()
    grouped = table.groupby("applicant_id")
    for column, rate in credit_default.MONEY.items():  # up for income and assets, down for debt
        moves = grouped[column].diff().dropna()
        assert (np.sign(moves) * np.sign(rate) >= 0).all(), column
        first, last = grouped[column].first(), grouped[column].last()
        big = first.notna() & (first.abs() >= 100)
        assert (np.sign(last[big] - first[big]) == np.sign(rate)).all(), column
    assert (
        (table[list(credit_default.PROFILE)].groupby(table["applicant_id"]).nunique() <= 1)
        .all()
        .all()
    )
