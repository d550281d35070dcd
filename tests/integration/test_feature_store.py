"""Feast on a temporary copy: point-in-time joins, online/offline skew, production backends.

The copy is applied, prepared (churn, credit_default) and materialised once per module, on the
embedded store (SQLite online store, file registry). The reference join below is deliberately
slow and plain: a loop over entity rows, so a reader can check it against Feast's semantics.
"""

import json
import math
import os
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pytest
import redis

from contract.features import FS_YAML_ENV, feature_store, keep_prometheus_environment
from contract.paths import offline_dir, raw_data
from pipelines import prepare
from pipelines.schema import validate_raw
from pipelines.sources import load_source
from tests.conftest import CATALOG
from tests.workspace import BIN, copy_project

pytestmark = pytest.mark.slow

KEYS = ["churn", "credit_default"]
VIEW = {"churn": "customer_monthly", "credit_default": "applicant_profile"}
UNKNOWN = {"customer_id": ["C00000", "C99999", "nobody"], "applicant_id": ["A00000", "A99999"]}
TS = "event_timestamp"
US = pd.Timedelta(microseconds=1)  # Feast's entity times are microseconds (ns ones are refused)
SERVER = "postgresql://postgres@127.0.0.1:5432"
REDIS_DB = 7  # a database of its own on the shared server, flushed before and after


def features_cli(root: Path, command: str, **env: str) -> None:
    """`python -m pipelines.features <command>` as DVC runs it: from the copy, in the copy."""
    base = {k: v for k, v in os.environ.items() if k != FS_YAML_ENV}
    result = subprocess.run(
        [str(BIN / "python"), "-m", "pipelines.features", command, "--root", str(root)],
        cwd=root,
        env=base | {"PYTHONPATH": str(root), "PATH": f"{BIN}:{os.environ['PATH']}"} | env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"features {command} failed:\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy with the definitions applied and both Feast-backed projects prepared."""
    with warnings.catch_warnings():  # Feast's import sets simplefilter("once", Deprecation...)
        keep_prometheus_environment()  # imports Feast, leaving PROMETHEUS_MULTIPROC_DIR alone
    copy = tmp_path_factory.mktemp("feast_project")
    copy_project(copy)
    # copy_project leaves data/ out, and Feast's file registry creates data/feast/ but no parent
    (copy / "data" / "feast").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(FS_YAML_ENV, raising=False)  # the embedded store, whatever the shell says
        features_cli(copy, "apply")
        for key in KEYS:
            prepare.main_work(CATALOG[key], copy)
        yield copy


@pytest.fixture(scope="module")
def store(root: Path) -> Any:
    return feature_store(root)


@pytest.fixture(scope="module")
def materialized(root: Path) -> dict[str, Any]:
    """The online store loaded; what materialize.json records per view."""
    features_cli(root, "materialize")
    report: dict[str, Any] = json.loads((root / "reports/feast/materialize.json").read_text())
    return report


def is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def mismatches(
    got: pd.DataFrame, want: pd.DataFrame, columns: list[str]
) -> list[tuple[int, str, Any, Any]]:
    """(row, column, got, want) wherever the two differ; nulls (None, NaN) are all equal."""
    out = []
    for column in columns:
        for i, (g, w) in enumerate(zip(got[column], want[column], strict=True)):
            if is_null(g) != is_null(w) or (not is_null(g) and g != w):
                out.append((i, column, g, w))
    return out


def source_table(store: Any, key: str, root: Path) -> tuple[Any, pd.DataFrame]:
    """The view and its offline table, which must be the copy's own file."""
    view = store.get_feature_view(VIEW[key])
    path = Path(view.batch_source.path)
    assert path.is_relative_to(root), f"{view.name} reads {path}, outside the copy"
    return view, pd.read_parquet(path)


def sample_entity_rows(table: pd.DataFrame, key: str, ttl: pd.Timedelta, seed: int) -> pd.DataFrame:
    """Entity rows of every kind that matters to a point-in-time join, labelled by `kind`."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(table[key].unique(), 150, replace=False)
    span = table.groupby(key)[TS].agg(["min", "max"]).loc[ids].reset_index(drop=True)
    first, last = span["min"], span["max"]
    lo, hi = table[TS].min() - 2 * ttl, table[TS].max() + 2 * ttl
    anywhere = lo + pd.to_timedelta((hi - lo).total_seconds() * rng.random(len(ids)), unit="s")
    at = table.sample(150, random_state=seed)
    ties = table[table.duplicated([key, TS], keep=False)]  # restated rows (churn only)
    ties = ties[ties[key].isin(rng.choice(ties[key].unique(), min(40, len(ties)), replace=False))]
    unknown = np.repeat(UNKNOWN[key], 5)
    parts: dict[str, tuple[Any, Any]] = {
        "anywhere": (ids, anywhere.floor("s")),
        "before": (ids, first - pd.Timedelta(seconds=1)),
        "before_far": (ids, first - pd.to_timedelta(rng.integers(1, 400, len(ids)), unit="D")),
        "at_event": (at[key], at[TS]),
        "at_tie": (ties[key], ties[TS]),
        "ttl_edge": (ids, last + ttl),  # Feast keeps a row exactly ttl old
        "ttl_inside": (ids, last + ttl - US),
        "ttl_outside": (ids, last + ttl + US),
        "ttl_outside_1s": (ids, last + ttl + pd.Timedelta(seconds=1)),
        "unknown": (unknown, table[TS].sample(len(unknown), random_state=seed)),
    }
    frames = [
        pd.DataFrame({key: np.asarray(k), TS: pd.Series(t).to_numpy(), "kind": kind})
        for kind, (k, t) in parts.items()
        if len(k)
    ]
    rows = pd.concat(frames, ignore_index=True)
    rows[TS] = pd.to_datetime(rows[TS], utc=True).astype("datetime64[ns, UTC]")
    return rows.assign(row=range(len(rows)))


def reference_join(
    entities: pd.DataFrame, table: pd.DataFrame, key: str, features: list[str], ttl: pd.Timedelta
) -> pd.DataFrame:
    """Per entity row: its key's latest table row by (event_timestamp, created), or nulls.

    Candidates are rows with ts - ttl <= event_timestamp <= ts, both ends inclusive, as
    feast/infra/offline_stores/ibis.py point_in_time_join has it (`event_timestamp <= ts` and
    `event_timestamp + ttl >= ts`). `created` only breaks ties: Feast does not drop rows
    created after ts unless asked (filter_by_created_timestamp=False by default).
    """
    by_key = dict(iter(table.groupby(key)))
    out = []
    for k, ts in zip(entities[key], entities[TS], strict=True):
        rows = by_key.get(k, table.iloc[:0])
        live = rows[(rows[TS] <= ts) & (rows[TS] + ttl >= ts)]
        if live.empty:
            out.append(dict.fromkeys(features) | {"found": False})
        else:
            best = live.sort_values([TS, "created"]).iloc[-1]
            out.append({f: best[f] for f in features} | {"found": True})
    return pd.DataFrame(out)


def ratio(num: Any, den: Any) -> float | None:
    return None if is_null(num) or is_null(den) or den <= 0 else num / den


def loan_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """The on-demand features as the catalog describes them, from the joined Income."""
    installment = [ratio(a, t) for a, t in zip(frame["Amount"], frame["Time"], strict=True)]
    return pd.DataFrame(
        {
            "loan_to_value": [
                ratio(a, p) for a, p in zip(frame["Amount"], frame["Price"], strict=True)
            ],
            "installment": installment,
            "installment_to_income": [
                ratio(i, n) for i, n in zip(installment, frame["Income"], strict=True)
            ],
        }
    )


def with_request(rows: pd.DataFrame, key: str, root: Path, seed: int) -> pd.DataFrame:
    """credit_default's request fields: the applicant's own loan, or a random one if unknown."""
    spec = CATALOG[key].features
    assert spec is not None
    labels = pd.read_parquet(offline_dir(key, root) / "labels.parquet").set_index(spec.entity)
    known = labels[spec.request].reindex(rows[spec.entity]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    filler = pd.DataFrame(rng.integers(1, 5000, known.shape), columns=spec.request)
    return rows.assign(**known.fillna(filler).astype("int64").set_index(rows.index))


def historical(store: Any, entities: pd.DataFrame, features: Any) -> pd.DataFrame:
    """get_historical_features, rows back in the entity frame's order (its `row` column)."""
    got: pd.DataFrame = store.get_historical_features(entity_df=entities, features=features).to_df()
    got = got.sort_values("row").reset_index(drop=True)
    assert got["row"].tolist() == entities["row"].tolist()
    return got


@pytest.mark.parametrize("key", KEYS)
def test_point_in_time_join_matches_reference(key: str, root: Path, store: Any) -> None:
    view, table = source_table(store, key, root)
    features, ttl = [f.name for f in view.features], pd.Timedelta(view.ttl)
    assert ttl == pd.Timedelta(days=45)
    entities = sample_entity_rows(table, view.join_keys[0], ttl, seed=7)
    refs = [f"{view.name}:{f}" for f in features]
    if key == "credit_default":
        entities = with_request(entities, key, root, seed=7)
        refs += [f"loan_ratios_odfv:{f}" for f in CATALOG[key].features.derived]  # type: ignore[union-attr]
    got = historical(store, entities, refs)
    want = reference_join(entities, table, view.join_keys[0], features, ttl)
    # the sample reaches every case: none of these is vacuous
    found = want.groupby(entities["kind"])["found"].agg(["all", "any"])
    assert ("at_tie" in found.index) == (key == "churn")
    assert found.loc[
        found.index.intersection(["ttl_edge", "ttl_inside", "at_event", "at_tie"]), "all"
    ].all()
    assert not found.loc[
        ["before", "before_far", "ttl_outside", "ttl_outside_1s", "unknown"], "any"
    ].any()
    assert found.loc["anywhere", "any"] and not found.loc["anywhere", "all"]
    assert mismatches(got, want, features)[:10] == []
    if key == "credit_default":
        derived = loan_ratios(entities.assign(Income=want["Income"]))
        assert mismatches(got, derived, list(derived.columns))[:10] == []
        assert derived["installment_to_income"].notna().sum() > 100


def test_restated_rows_join_to_their_correction(root: Path, store: Any) -> None:
    view, table = source_table(store, "churn", root)
    ties = table[table.duplicated(["customer_id", TS], keep=False)].sort_values("created")
    pairs = ties.groupby(["customer_id", TS])["total_charges"].agg(["first", "last"]).reset_index()
    # the wrong (earlier) total differs from the fixed (later) one where there was a bill
    pairs = pairs[pairs["last"].notna() & (pairs["first"] != pairs["last"])].head(200)
    assert len(pairs) == 200
    entities = pairs[["customer_id", TS]].assign(row=range(len(pairs)))
    got = historical(store, entities, [f"{view.name}:total_charges"])
    assert got["total_charges"].tolist() == pairs["last"].tolist()


def source_rows(key: str) -> pd.DataFrame:
    """The source as prepare validates it, before the timeline (row i is entity i + 1)."""
    spec = CATALOG[key]
    source = load_source(spec.source)
    return validate_raw(
        source.drop(columns=[c for c in spec.drop if c in source]), spec, source=True
    )


def latest_rows(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """The naive join's side: each entity's newest row, ignoring when the label was observed."""
    return table.sort_values([TS, "created"]).groupby(key).tail(1).set_index(key)


@pytest.mark.parametrize(
    ("key", "drifting"), [("churn", ["tenure"]), ("credit_default", ["Income", "Debt"])]
)
def test_point_in_time_matters(key: str, drifting: list[str], root: Path, store: Any) -> None:
    view, table = source_table(store, key, root)
    entity = view.join_keys[0]
    joined = pd.read_parquet(raw_data(key, root))  # what prepare trained on: Feast's PIT join
    labels = pd.read_parquet(offline_dir(key, root) / "labels.parquet")
    assert joined[entity].tolist() == labels[entity].tolist()
    # at observed_at (churn) or the application date (credit) the snapshot is the source row
    source = source_rows(key).reset_index(drop=True)
    assert mismatches(joined, source, [f.name for f in view.features])[:10] == []
    naive = latest_rows(table, entity).loc[joined[entity]].reset_index(drop=True)
    changed = pd.Series(False, index=joined.index)
    for column in drifting:
        changed |= joined[column].notna() & (naive[column] != joined[column])
    assert changed.mean() > 0.5, f"a naive join differs for only {changed.mean():.0%} of {key}"
    if key == "churn":  # stayers are billed for followup_months more; churners stop
        stays = (joined["churn"] == "No").to_numpy()
        gap = (naive["tenure"] - joined["tenure"]).to_numpy()
        assert (gap[stays] == CATALOG[key].features.followup_months).all()  # type: ignore[union-attr]
        assert (gap[~stays] == 0).all()


def fresh_and_stale(
    table: pd.DataFrame, key: str, end: pd.Timestamp, ttl: pd.Timedelta
) -> pd.Series:
    """Last event times of 25 entities seen within ttl of `end`, then of 25 older ones."""
    last = table.groupby(key)[TS].max()
    rng = np.random.default_rng(11)
    fresh, stale = last[last + ttl >= end].index, last[last + ttl < end].index
    return last.loc[[*rng.choice(fresh, 25, replace=False), *rng.choice(stale, 25, replace=False)]]


def entity_frame(key: str, ids: Any, at: Any, root: Path) -> pd.DataFrame:
    """Entity rows of catalog entry `key` at time(s) `at`, with request fields where it has them."""
    spec = CATALOG[key].features
    assert spec is not None
    rows = pd.DataFrame({spec.entity: np.asarray(ids), TS: at}).assign(row=range(len(ids)))
    rows[TS] = pd.to_datetime(rows[TS], utc=True).astype("datetime64[ns, UTC]")
    return with_request(rows, key, root, seed=0) if spec.request else rows


def online(store: Any, service: Any, entities: pd.DataFrame) -> pd.DataFrame:
    request = entities.drop(columns=[TS, "row"]).to_dict("records")
    return pd.DataFrame(store.get_online_features(features=service, entity_rows=request).to_dict())


def service_of(store: Any, key: str) -> tuple[Any, list[str]]:
    """The entry's FeatureService and the names of the features it serves."""
    service = store.get_feature_service(CATALOG[key].features.service)  # type: ignore[union-attr]
    return service, [f.name for p in service.feature_view_projections for f in p.features]


@pytest.mark.parametrize("key", KEYS)
def test_online_matches_offline_at_materialisation(
    key: str, root: Path, store: Any, materialized: dict[str, Any]
) -> None:
    view, table = source_table(store, key, root)
    ttl, (service, names) = pd.Timedelta(view.ttl), service_of(store, key)
    end = pd.Timestamp(materialized[view.name]["end"])
    last = fresh_and_stale(table, view.join_keys[0], end, ttl)
    served = online(store, service, entity_frame(key, last.index, end, root))
    at_end = historical(store, entity_frame(key, last.index, end, root), service)
    fresh, stale = slice(0, 25), slice(25, 50)
    assert mismatches(served.iloc[fresh], at_end.iloc[fresh], names)[:10] == []
    # Feast's online read ignores the ttl: an entity silent for longer than ttl is still
    # served its last row, which the offline join at the same time has expired
    assert at_end.iloc[stale][[f.name for f in view.features]].isna().all().all()
    at_last = historical(store, entity_frame(key, last.index, last.to_numpy(), root), service)
    assert mismatches(served.iloc[stale], at_last.iloc[stale], names)[:10] == []
    assert served[names].notna().any().all()


@pytest.fixture
def registry_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the SQL registry, dropped afterwards."""
    name = f"feast_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_production_store_serves_what_the_embedded_one_does(
    root: Path,
    store: Any,
    materialized: dict[str, Any],
    registry_url: str,
    redis_db: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prod = tmp_path / "project"  # its own copy: apply resolves the sources' paths there
    shutil.copytree(root, prod, ignore=shutil.ignore_patterns("feast"))
    env = {
        FS_YAML_ENV: "feature_repo/feature_store.production.yaml",
        "FEAST_REGISTRY_URL": registry_url,
        "FEAST_REDIS": f"127.0.0.1:6379,db={REDIS_DB}",
    }
    features_cli(prod, "apply", **env)
    # the declarations' manifest is the embedded store's, so the prepare stages that depend
    # on it are restored from a run cache made on the embedded store (the compose trainer's);
    # the store config in force, which materialisation depends on, is not
    manifests = [root / "reports" / "feast", prod / "reports" / "feast"]
    embedded, production_ = (
        [(m / n).read_text() for n in ("apply.json", "store.json")] for m in manifests
    )
    assert production_[0] == embedded[0]
    assert json.loads(production_[1])["config"] == "feature_store.production.yaml"
    assert production_[1] != embedded[1]
    features_cli(prod, "materialize", **env)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    production = feature_store(prod)
    assert type(production.registry).__name__ == "SqlRegistry"
    for key in KEYS:
        view, table = source_table(store, key, root)
        service, names = service_of(store, key)
        ids = np.random.default_rng(3).choice(table[view.join_keys[0]].unique(), 50, replace=False)
        rows = entity_frame(key, ids, pd.Timestamp.now(tz="UTC"), root)
        want = online(store, service, rows)
        got = online(production, production.get_feature_service(service.name), rows)
        assert want[names].notna().any().all()
        assert mismatches(got, want, names)[:10] == []
    sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    with psycopg.connect(registry_url.replace("+psycopg", "")) as conn:
        tables = {name for (name,) in conn.execute(sql).fetchall()}
        views = conn.execute("SELECT count(*) FROM feature_views").fetchone()
    assert {"projects", "entities", "feature_views", "feature_services", "data_sources"} <= tables
    assert views == (2,)
    # one hash per entity key, holding every view of that entity
    assert redis_db.dbsize() == sum(v["entities"] for v in materialized.values())
