"""Matrix factorisation of a ratings table: two models fitted by alternating least squares.

- Ratings (explicit): biased factorisation, r_ui ~ mu + b_u + b_i + p_u . q_i, L2-regularised;
  it predicts the rating a user would give, and is judged by RMSE on held-out ratings.
- Preferences (implicit, Hu, Koren & Volinsky 2008): which items a user chooses to rate at
  all, each rating weighted by confidence 1 + alpha * r. Ranking by predicted rating favours
  obscure items a few people loved; ranking by preference finds what a user will watch and
  like, and is judged by precision / recall at k against the popularity baseline.

A user's list is ranked by preference and shows each item's predicted rating. Users unknown
at training time get the most-rated items (popularity), the cold-start fallback.
"""

import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from pipelines.log import get_logger

log = get_logger(__name__)


@dataclass
class Factors:
    """A fitted factorisation: plain arrays (saved as .npz, never pickled)."""

    users: np.ndarray  # int64 [U]: user ids, in row order
    items: np.ndarray  # int64 [I]: item ids, in column order
    names: np.ndarray  # str [I]: the items' display names
    mu: float  # global mean rating
    lo: float  # rating scale (predictions are clipped to it)
    hi: float
    user_factors: np.ndarray  # [U, k]  ratings model
    item_factors: np.ndarray  # [I, k]
    user_bias: np.ndarray  # [U]
    item_bias: np.ndarray  # [I]
    user_prefs: np.ndarray  # [U, kp]  preference model
    item_prefs: np.ndarray  # [I, kp]
    popularity: np.ndarray  # [I]: I - rank by training ratings (no ties), the fallback order
    seen_indptr: np.ndarray  # CSR of the training pairs: a user's list leaves them out
    seen_indices: np.ndarray
    top_k: int

    @cached_property
    def seen(self) -> sp.csr_matrix:
        """The training pairs as a [U, I] sparse matrix, built once per model."""
        shape = (len(self.users), len(self.items))
        data = np.ones(len(self.seen_indices), np.uint8)
        return sp.csr_matrix((data, self.seen_indices, self.seen_indptr), shape=shape)


class Factorization:
    """The estimator: hyperparameters in, `Factors` out of `fit`."""

    def __init__(
        self,
        factors: int,
        regularization: float,
        epochs: int,
        preference_factors: int,
        preference_regularization: float,
        confidence: float,
        preference_epochs: int,
        top_k: int,
        random_state: int,
    ) -> None:
        self.factors, self.regularization, self.epochs = factors, regularization, epochs
        self.preference_factors = preference_factors
        self.preference_regularization = preference_regularization
        self.confidence, self.preference_epochs = confidence, preference_epochs
        self.top_k, self.random_state = top_k, random_state

    def fit(
        self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray, names: np.ndarray
    ) -> Factors:
        """`users`, `items`, `ratings`: one entry per training rating; `names` per rating too."""
        user_ids, rows = np.unique(users, return_inverse=True)
        item_ids, cols = np.unique(items, return_inverse=True)
        first = np.unique(cols, return_index=True)[1]
        shape = (len(user_ids), len(item_ids))
        mu = float(ratings.mean())
        residual = sp.csr_matrix((ratings - mu, (rows, cols)), shape=shape)
        P, Q, bu, bi = biased_als(
            residual, self.factors, self.regularization, self.epochs, self.random_state
        )
        confidence = sp.csr_matrix((self.confidence * ratings, (rows, cols)), shape=shape)
        X, Y = implicit_als(
            confidence,
            self.preference_factors,
            self.preference_regularization,
            self.preference_epochs,
            self.random_state,
        )
        counts = np.bincount(cols, minlength=len(item_ids))
        order = np.lexsort((item_ids, -bi, -counts))  # most rated; ties: better rated, lower id
        popularity = np.empty(len(item_ids))
        popularity[order] = np.arange(len(item_ids), 0, -1)
        seen = confidence.copy()
        seen.sort_indices()
        return Factors(
            users=user_ids.astype(np.int64),
            items=item_ids.astype(np.int64),
            names=np.asarray(names)[first].astype(str),
            mu=mu,
            lo=float(ratings.min()),
            hi=float(ratings.max()),
            user_factors=P,
            item_factors=Q,
            user_bias=bu,
            item_bias=bi,
            user_prefs=X,
            item_prefs=Y,
            popularity=popularity,
            seen_indptr=seen.indptr.astype(np.int64),
            seen_indices=seen.indices.astype(np.int64),
            top_k=self.top_k,
        )


def _solve_rows(
    target: np.ndarray, matrix: sp.csr_matrix, other: np.ndarray, reg: np.ndarray
) -> None:
    """Ridge regression per row of `matrix` on the columns it has, into `target`."""
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        cols, y = matrix.indices[start:end], matrix.data[start:end]
        A = other[cols]
        target[row] = np.linalg.solve(A.T @ A + reg, A.T @ y)


def biased_als(
    residual: sp.csr_matrix, k: int, lam: float, epochs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(P, Q, b_u, b_i) for r - mu: each side's factors and bias solved together, with the
    other side's bias moved to the left-hand side (biases regularised a tenth as much)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = residual.shape
    user = np.hstack([rng.normal(0, 0.1, (n_users, k)), np.zeros((n_users, 1))])
    item = np.hstack([rng.normal(0, 0.1, (n_items, k)), np.zeros((n_items, 1))])
    reg = lam * np.eye(k + 1)
    reg[k, k] = lam / 10
    by_item = residual.T.tocsr()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for solved, matrix, other in ((user, residual, item), (item, by_item, user)):
            shifted = matrix.copy()  # r - mu - (the other side's bias)
            shifted.data -= other[shifted.indices, k]
            augmented = np.hstack([other[:, :k], np.ones((len(other), 1))])
            _solve_rows(solved, shifted, augmented, reg)
        if epoch == epochs or epoch % 5 == 0:
            pairs = residual.tocoo()  # progress: the training RMSE
            rows, cols = pairs.row, pairs.col
            fitted = (user[rows, :k] * item[cols, :k]).sum(1) + user[rows, k] + item[cols, k]
            rmse = float(np.sqrt(np.mean((pairs.data - fitted) ** 2)))
            log.info(
                "ratings ALS epoch %d/%d: training RMSE %.4f (%.1fs)",
                epoch,
                epochs,
                rmse,
                time.perf_counter() - started,
            )
    return user[:, :k], item[:, :k], user[:, k], item[:, k]


def implicit_als(
    confidence: sp.csr_matrix, k: int, lam: float, epochs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) with x_u . y_i ~ 1 where u rated i, 0 elsewhere, weighted by 1 + confidence."""
    rng = np.random.default_rng(seed)
    n_users, n_items = confidence.shape
    X, Y = rng.normal(0, 0.01, (n_users, k)), rng.normal(0, 0.01, (n_items, k))
    by_item = confidence.T.tocsr()
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        for solved, matrix, other in ((X, confidence, Y), (Y, by_item, X)):
            gram = other.T @ other + lam * np.eye(k)
            for row in range(matrix.shape[0]):
                start, end = matrix.indptr[row], matrix.indptr[row + 1]
                cols, c = matrix.indices[start:end], matrix.data[start:end]
                B = other[cols]
                solved[row] = np.linalg.solve(gram + (B.T * c) @ B, B.T @ (1 + c))
        if epoch == epochs or epoch % 5 == 0:
            log.info(
                "preference ALS epoch %d/%d (%.1fs)", epoch, epochs, time.perf_counter() - started
            )
    return X, Y
