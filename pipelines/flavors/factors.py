"""Matrix factorisation: arrays in an .npz (no pickle), exported as one ONNX graph.

The graph takes the user id and answers the top-k list: ids, names, predicted ratings and
whether it is the popularity fallback (a user unknown at training time). The lookup from
user id to factor row is ONNX-ML's LabelEncoder; items the user already rated are masked.
It also outputs every item's predicted rating (`ratings`), the rating of an item unknown to
the model (`baseline`, mu + b_u) and the item ids in column order (`catalog`), which the
pipeline reads to score held-out ratings; the service never asks for them.
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from contract.catalog import ModelSpec
from pipelines.cli import StageError
from pipelines.estimators.factorization import Factorization, Factors
from pipelines.log import get_logger

log = get_logger(__name__)
MODEL_FILE = "factors.npz"
OPSET = {"": 18, "ai.onnx.ml": 3}
IR_VERSION = 9  # what opset 18 needs; the onnx package's default may be newer than Runtime's
SERVED = ("items", "names", "scores", "fallback")


def user_column(spec: ModelSpec) -> str:
    return next(iter(spec.fields))


def fit(estimator: Factorization, train: pd.DataFrame, spec: ModelSpec, out: Path) -> Factors:
    assert spec.target.item and spec.target.item_name
    started = time.perf_counter()
    model = estimator.fit(
        train[user_column(spec)].to_numpy(np.int64),
        train[spec.target.item].to_numpy(np.int64),
        train[spec.target.column].to_numpy(np.float64),
        train[spec.target.item_name].fillna("").to_numpy(),
    )
    log.info(
        "fitted %s on %d ratings of %d users and %d items in %.1fs",
        spec.key,
        len(train),
        len(model.users),
        len(model.items),
        time.perf_counter() - started,
    )
    return model


def save(model: Factors, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / MODEL_FILE, **dataclasses.asdict(model))


def load(directory: Path, spec: ModelSpec) -> Factors:
    with np.load(directory / MODEL_FILE, allow_pickle=False) as arrays:
        values: dict[str, Any] = {name: arrays[name] for name in arrays.files}
    for name in ("mu", "lo", "hi"):
        values[name] = float(values[name])
    values["top_k"] = int(values["top_k"])
    return Factors(**values)


def _rows(model: Factors, users: np.ndarray) -> np.ndarray:
    """Factor row of each user id; len(model.users) for an unknown one."""
    position = np.searchsorted(model.users, users)
    position = np.minimum(position, len(model.users) - 1)
    return np.where(model.users[position] == users, position, len(model.users))


def predict(model: Factors, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Predicted ratings of the frame's (user, item) pairs; an unknown user or item adds
    nothing of its own (mu + the known side's bias)."""
    assert spec.target.item
    users = frame[user_column(spec)].to_numpy(np.int64)
    items = frame[spec.target.item].to_numpy(np.int64)
    u, i = _rows(model, users), _item_columns(model, items)
    P = np.vstack([model.user_factors, np.zeros(model.user_factors.shape[1])])
    Q = np.vstack([model.item_factors, np.zeros(model.item_factors.shape[1])])
    bu, bi = np.append(model.user_bias, 0.0), np.append(model.item_bias, 0.0)
    rating = model.mu + bu[u] + bi[i] + (P[u] * Q[i]).sum(axis=1)
    return np.asarray(np.clip(rating, model.lo, model.hi), dtype=np.float64)


def _item_columns(model: Factors, items: np.ndarray) -> np.ndarray:
    position = np.minimum(np.searchsorted(model.items, items), len(model.items) - 1)
    return np.where(model.items[position] == items, position, len(model.items))


def ranking_values(model: Factors, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(what each item is ranked by [N, I], fallback [N]) per user id: the preference, with
    -inf for items the user rated in training; the popularity for an unknown user."""
    rows = _rows(model, np.asarray(users, np.int64))
    known = rows < len(model.users)
    seen = model.seen
    ranking = np.tile(model.popularity, (len(rows), 1))
    for n in np.flatnonzero(known):
        prefs = model.item_prefs @ model.user_prefs[rows[n]]
        prefs[seen[rows[n]].indices] = -np.inf
        ranking[n] = prefs
    return ranking, ~known


def recommend(
    model: Factors, users: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item columns [N, k], ranking values [N, k], fallback [N]) for each user id."""
    ranking, fallback = ranking_values(model, users)
    return (*top_of(ranking, k or model.top_k), fallback)


def top_of(ranking: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(item columns [N, k], their ranking values [N, k]): the k highest of each row."""
    top = np.argsort(-ranking, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(ranking, top, axis=1)


def popular(model: Factors, users: np.ndarray, k: int) -> np.ndarray:
    """The popularity baseline: the k most-rated items each user has not rated yet."""
    rows, seen, order = _rows(model, users), model.seen, np.argsort(-model.popularity)
    out = np.empty((len(rows), k), np.int64)
    for n, row in enumerate(rows):
        rated = set(seen[row].indices) if row < len(model.users) else set()
        out[n] = [c for c in order[: k + len(rated)] if c not in rated][:k]
    return out


def explain(model: Factors, test: pd.DataFrame, spec: ModelSpec) -> None:
    """Latent factors have no per-field importance: the one field is the user."""
    return None


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def to_onnx(model: Factors, spec: ModelSpec) -> onnx.ModelProto:
    n_users = len(model.users)
    k, kp = model.user_factors.shape[1], model.user_prefs.shape[1]
    # ratings: [p_u, 1, mu + b_u] . [q_i, b_i, 1]; the unknown user's row is [0, 1, mu]
    user_side = np.hstack(
        [model.user_factors, np.ones((n_users, 1)), (model.mu + model.user_bias)[:, None]]
    )
    user_side = np.vstack([user_side, np.r_[np.zeros(k), 1.0, model.mu]]).astype(np.float32)
    item_side = np.hstack(
        [model.item_factors, model.item_bias[:, None], np.ones((len(model.items), 1))]
    ).T.astype(np.float32)
    prefs = np.vstack([model.user_prefs, np.zeros(kp)]).astype(np.float32)
    seen = np.vstack([model.seen.toarray(), np.zeros(len(model.items))]).astype(np.uint8)
    user = user_column(spec)
    initializers = [
        _const("user_side", user_side),
        _const("item_side", item_side),
        _const("user_prefs", prefs),
        _const("item_prefs_t", model.item_prefs.T.astype(np.float32)),
        _const("seen", seen),
        _const("popularity", model.popularity[None, :].astype(np.float32)),
        _const("catalog_ids", model.items.astype(np.int64)),
        _const("unknown_row", np.array(n_users, np.int64)),
        _const("flat", np.array([-1], np.int64)),
        _const("k", np.array([model.top_k], np.int64)),
        _const("lo", np.array(model.lo, np.float32)),
        _const("hi", np.array(model.hi, np.float32)),
        _const("excluded", np.array(-np.inf, np.float32)),
        _const("one", np.array([1], np.int64)),
        _const("mu_column", np.array([k + 1], np.int64)),
    ]
    names = helper.make_tensor("item_names", TensorProto.STRING, [len(model.names)],
                               [n.encode() for n in model.names])  # fmt: skip
    nodes = [
        helper.make_node("Cast", [user], ["user_int"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["user_int", "flat"], ["user_flat"]),
        helper.make_node(
            "LabelEncoder",
            ["user_flat"],
            ["row"],
            domain="ai.onnx.ml",
            keys_int64s=model.users.tolist(),
            values_int64s=list(range(n_users)),
            default_int64=n_users,
        ),
        helper.make_node("Less", ["row", "unknown_row"], ["known"]),
        helper.make_node("Not", ["known"], ["fallback"]),
        # predicted ratings of every item, and of an item the model does not know
        helper.make_node("Gather", ["user_side", "row"], ["user_vec"], axis=0),
        helper.make_node("MatMul", ["user_vec", "item_side"], ["raw_ratings"]),
        helper.make_node("Clip", ["raw_ratings", "lo", "hi"], ["ratings"]),
        helper.make_node("Gather", ["user_vec", "mu_column"], ["raw_baseline"], axis=1),
        helper.make_node("Reshape", ["raw_baseline", "flat"], ["flat_baseline"]),
        helper.make_node("Clip", ["flat_baseline", "lo", "hi"], ["baseline"]),
        # the ranking: preference, items already rated excluded; popularity when unknown
        helper.make_node("Gather", ["user_prefs", "row"], ["pref_vec"], axis=0),
        helper.make_node("MatMul", ["pref_vec", "item_prefs_t"], ["prefs"]),
        helper.make_node("Gather", ["seen", "row"], ["seen_rows"], axis=0),
        helper.make_node("Cast", ["seen_rows"], ["is_seen"], to=TensorProto.BOOL),
        helper.make_node("Where", ["is_seen", "excluded", "prefs"], ["personal"]),
        helper.make_node("Unsqueeze", ["known", "one"], ["known_column"]),
        helper.make_node("Where", ["known_column", "personal", "popularity"], ["ranking"]),
        helper.make_node("TopK", ["ranking", "k"], ["top_values", "top"], axis=1),
        helper.make_node("Gather", ["catalog_ids", "top"], ["items"], axis=0),
        helper.make_node("Gather", ["item_names", "top"], ["names"], axis=0),
        helper.make_node("GatherElements", ["ratings", "top"], ["scores"], axis=1),
        helper.make_node("Identity", ["catalog_ids"], ["catalog"]),
    ]
    n_items = len(model.items)
    graph = helper.make_graph(
        nodes,
        f"{spec.key}_factorisation",
        [helper.make_tensor_value_info(user, TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor_value_info("items", TensorProto.INT64, [None, model.top_k]),
            helper.make_tensor_value_info("names", TensorProto.STRING, [None, model.top_k]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, model.top_k]),
            helper.make_tensor_value_info("fallback", TensorProto.BOOL, [None]),
            helper.make_tensor_value_info("ratings", TensorProto.FLOAT, [None, n_items]),
            helper.make_tensor_value_info("baseline", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("catalog", TensorProto.INT64, [n_items]),
        ],
        [*initializers, names],
    )
    opsets = [helper.make_opsetid(domain, version) for domain, version in OPSET.items()]
    model_proto = helper.make_model(graph, opset_imports=opsets, producer_name="mlops-platform")
    model_proto.ir_version = IR_VERSION
    return model_proto


LIKED = 4.0  # a held-out rating this high makes the item relevant to its user


def ranking_curve(
    model: Factors, test: pd.DataFrame, spec: ModelSpec, up_to: int = 20
) -> pd.DataFrame:
    """Precision and recall at k = 1..`up_to` of the served ranking and of the popularity
    baseline, over the users known to the model with a held-out rating >= LIKED (items they
    rated in training are excluded from both lists, as the service does)."""
    assert spec.target.item
    liked = test[test[spec.target.column] >= LIKED]
    relevant = liked.groupby(user_column(spec))[spec.target.item].agg(set)
    candidates = relevant.index.to_numpy(np.int64)
    users = candidates[_rows(model, candidates) < len(model.users)]
    if not len(users):
        raise ValueError(f"no user known to the model has a held-out rating >= {LIKED}")
    served = model.items[recommend(model, users, up_to)[0]]
    baseline = model.items[popular(model, users, up_to)]
    rows = []
    for k in range(1, up_to + 1):
        row: dict[str, float] = {"k": k}
        for name, lists in (("", served), ("popularity_", baseline)):
            hits = np.array([len(set(lists[n, :k]) & relevant[u]) for n, u in enumerate(users)])
            sizes = np.array([len(relevant[u]) for u in users])
            row[f"{name}precision"] = float((hits / k).mean())
            row[f"{name}recall"] = float((hits / sizes).mean())
        rows.append(row)
    curve = pd.DataFrame(rows)
    curve.attrs["users"] = len(users)
    return curve


def ranking_metrics(curve: pd.DataFrame, k: int) -> dict[str, float]:
    """The served ranking at k, the popularity baseline at k, and the lift over it."""
    at = curve.set_index("k").loc[k]
    result = {
        f"precision_at_{k}": at["precision"],
        f"recall_at_{k}": at["recall"],
        f"popularity_precision_at_{k}": at["popularity_precision"],
        f"popularity_recall_at_{k}": at["popularity_recall"],
        f"precision_at_{k}_lift": at["precision"] / at["popularity_precision"],
        "ranking_users": curve.attrs["users"],
    }
    return {name: round(float(value), 6) for name, value in result.items()}


def report(
    model: Factors, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, metrics) of evaluate: the served lists against popularity."""
    views = {"ranking": ranking_curve(model, test, spec)}
    return views, ranking_metrics(views["ranking"], model.top_k)


def check_served(
    session: Any, frame: pd.DataFrame, spec: ModelSpec, model: Factors, tolerance: float
) -> None:
    """The graph's top-k lists must be the model's: for every test user and one it never saw,
    the same fallback decision and items ranked as high (ties may come in either order)."""
    user = user_column(spec)
    users = np.append(np.unique(frame[user].to_numpy(np.int64)), model.users.max() + 1)
    feeds = {user: users.astype(np.float32).reshape(-1, 1)}
    items, fallback = session.run(["items", "fallback"], feeds)
    ranking, cold = ranking_values(model, users)
    _, values = top_of(ranking, model.top_k)
    if not np.array_equal(fallback, cold):
        raise StageError("the ONNX graph's popularity fallback differs from the model's")
    ranked = np.take_along_axis(ranking, np.searchsorted(model.items, items), axis=1)
    gap = np.abs(np.sort(ranked, axis=1)[:, ::-1] - values)  # an item rated before: inf
    if not gap.max() <= tolerance:
        rows = int((gap > tolerance).any(axis=1).sum())
        raise StageError(f"the ONNX graph's top-{model.top_k} lists differ for {rows} users")
