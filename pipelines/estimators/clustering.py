"""Segmentation (task: clustering): K-Means that chooses its k, and its ONNX conversion.

`SilhouetteKMeans` chooses its number of clusters by silhouette, checks that other seeds
find the same clusters (adjusted Rand index), and numbers the clusters in a fixed order, so
that "segment 1" means the same customers whatever the seed (pipelines/segments.py profiles
them). As the last step of a pipeline it converts the whole pipeline (`export_onnx`), says
what evaluate draws (`report`) and what the served graph carries (`metadata`): the
sklearn flavor asks the estimator a pipeline ends in.
"""

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pandas as pd
from skl2onnx import to_onnx as skl_to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.flavors import onnx_ops
from pipelines.log import get_logger
from pipelines.schema import model_frame
from pipelines.segments import profiles

log = get_logger(__name__)


class SilhouetteKMeans(ClusterMixin, TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """K-Means with k in [k_min, k_max] chosen by silhouette; `transform` gives the distances
    to the centres, `predict` the nearest. Fitted attributes: `kmeans_` (the chosen model,
    centres ordered by their first coordinate), `silhouette_by_k_`, `stability_ari_` (the
    lowest adjusted Rand index between this clustering and the ones other seeds find)."""

    def __init__(
        self,
        k_min: int = 2,
        k_max: int = 8,
        n_init: int = 10,
        stability_seeds: tuple[int, ...] = (1, 2, 3),
        silhouette_sample: int = 4000,
        random_state: int = 42,
    ) -> None:
        self.k_min = k_min
        self.k_max = k_max
        self.n_init = n_init
        self.stability_seeds = stability_seeds
        self.silhouette_sample = silhouette_sample
        self.random_state = random_state

    def _kmeans(self, k: int, seed: int) -> KMeans:
        return KMeans(n_clusters=k, n_init=self.n_init, random_state=seed)

    def fit(self, X: Any, y: Any = None) -> "SilhouetteKMeans":
        X = np.asarray(X, dtype=np.float32)
        sample = min(self.silhouette_sample, len(X))
        self.silhouette_by_k_: dict[int, float] = {}
        for k in range(self.k_min, self.k_max + 1):
            labels = self._kmeans(k, self.random_state).fit_predict(X)
            score = silhouette_score(X, labels, sample_size=sample, random_state=self.random_state)
            self.silhouette_by_k_[k] = round(float(score), 6)
            log.info("k=%d: silhouette %.4f", k, score)
        best = max(self.silhouette_by_k_, key=lambda k: (self.silhouette_by_k_[k], -k))
        self.kmeans_ = _ordered(self._kmeans(best, self.random_state).fit(X))
        labels = self.kmeans_.predict(X)
        self.stability_ari_ = min(
            (
                adjusted_rand_score(labels, self._kmeans(best, seed).fit_predict(X))
                for seed in self.stability_seeds
            ),
            default=1.0,
        )
        log.info("k=%d chosen; seeds %s agree: ARI >= %.4f", best, self.stability_seeds,
                 self.stability_ari_)  # fmt: skip
        self.n_clusters_ = best
        self.cluster_centers_ = self.kmeans_.cluster_centers_
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.asarray(self.kmeans_.transform(np.asarray(X, dtype=np.float32)))

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(self.kmeans_.predict(np.asarray(X, dtype=np.float32)))

    def export_onnx(self, pipeline: Pipeline, spec: ModelSpec) -> onnx.ModelProto:
        """The features graph (outputs `embedding`, the clustered space) joined to the
        K-Means graph (`label`, the nearest centre, and `distances` to every centre)."""
        onnx_ops.register()
        kmeans = self.kmeans_
        width = int(kmeans.cluster_centers_.shape[1])
        space = skl_to_onnx(
            pipeline[:-1],
            initial_types=onnx_ops.field_types(spec),
            target_opset=onnx_ops.TARGET_OPSET,
            final_types=[("embedding", FloatTensorType([None, width]))],
        )
        centres = skl_to_onnx(
            kmeans,
            initial_types=[("embedding", FloatTensorType([None, width]))],
            target_opset=onnx_ops.TARGET_OPSET,
            final_types=[
                ("label", Int64TensorType([None])),
                ("distances", FloatTensorType([None, kmeans.n_clusters])),
            ],
        )
        centres = onnx.compose.add_prefix(
            centres, "kmeans_", rename_inputs=True, rename_outputs=False
        )
        for graph in (space, centres):  # one version per domain (skl2onnx keeps the lowest)
            del graph.opset_import[:]
            graph.opset_import.extend(
                onnx.helper.make_opsetid(domain, version)
                for domain, version in onnx_ops.TARGET_OPSET.items()
            )
        return onnx.compose.merge_models(
            space,
            centres,
            io_map=[("embedding", "kmeans_embedding")],
            outputs=["label", "distances", "embedding"],
        )

    def report(
        self,
        pipeline: Pipeline,
        spec: ModelSpec,
        train: pd.DataFrame,
        test: pd.DataFrame,
        predicted: np.ndarray,
        refit: Callable[[pd.DataFrame, pd.DataFrame], np.ndarray],
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """(views, metrics) of evaluate: the space it clusters, where the task judges it
        (silhouette), and itself (its search over k)."""
        return {"embedding": embed(pipeline, test, spec), "clusters": self}, {}

    def metadata(self, pipeline: Pipeline, spec: ModelSpec, train: pd.DataFrame) -> dict[str, str]:
        """Each segment's profile on the training split, in the fields' own units and in
        label order: the service answers each record with its segment's."""
        distances = np.asarray(pipeline.transform(model_frame(train, spec)), dtype=np.float64)
        found = profiles(spec, train, spec.task_kind.labels(distances, None))
        log.info("%s: %d segments, profiled on the training split", spec.key, len(found))
        return {"segments": json.dumps(found)}


def embed(pipeline: Pipeline, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """A clustering pipeline's space: what its last step clusters (silhouette is measured here)."""
    return np.asarray(pipeline[:-1].transform(model_frame(frame, spec)), dtype=np.float64)


def _ordered(kmeans: KMeans) -> KMeans:
    """The same clustering with its centres sorted (first coordinate, then the next ...):
    label numbers no longer depend on the seed."""
    order = np.lexsort(kmeans.cluster_centers_.T[::-1])
    kmeans.cluster_centers_ = kmeans.cluster_centers_[order]
    kmeans.labels_ = np.argsort(order)[kmeans.labels_]
    return kmeans
