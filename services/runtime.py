"""ONNX Runtime on a registered artifact: validated records in, per-record predictions out."""

import json
import math
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from pipelines.catalog import ModelSpec
from pipelines.flavors import factors, retrieval
from pipelines.reference import summarize
from services.store import Artifact, ArtifactRefused

NUMERIC = ("float", "int")
# Characters of padding a text graph's batch must be spared before it runs in chunks
# (LoadedModel.predict): ~0.5 ms of tokenizing, the cost of a few more runs
PADDING_MIN = 100_000


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One request is tiny: threads cost more than they save, and workers give the parallelism
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@dataclass
class LoadedModel:
    """One version of one model, ready to predict."""

    spec: ModelSpec
    artifact: Artifact
    # a search: the tokenizer, the encoder and the FAISS index, with a session's interface
    session: ort.InferenceSession | retrieval.RetrievalSession

    @property
    def name(self) -> str:
        return self.spec.key

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def alias(self) -> str:
        return self.artifact.alias

    @cached_property
    def segments(self) -> list[dict[str, Any]]:
        """A segmentation's profile of each segment, in label order (from the artifact)."""
        return list(json.loads(self.session.get_modelmeta().custom_metadata_map["segments"]))

    @cached_property
    def threshold(self) -> float | None:
        """The decision threshold the graph's label applies (tuned classifiers, detectors)."""
        value = self.session.get_modelmeta().custom_metadata_map.get("threshold")
        return None if value is None else float(value)

    @property
    def gate_metric(self) -> tuple[str, float]:
        name = self.spec.gate_metric
        return name, float(self.artifact.metrics.get(name, math.nan))

    def feeds(self, records: list[BaseModel]) -> dict[str, np.ndarray]:
        """One tensor per field, exactly as the pipeline's onnx_feeds builds them. The records'
        values in one pass (attrgetter, transposed by zip) and each column converted whole:
        a column at a time over the records, with a one-element list per value, took 31 ms
        of a 1000-row house_prices batch (73 fields) where this takes 8."""
        fields = self.spec.fields
        names, size = list(fields), len(records)
        if len(names) == 1:
            columns: list[Any] = [[getattr(r, names[0]) for r in records]]
        elif size:
            columns = list(zip(*map(attrgetter(*names), records), strict=True))
        else:
            columns = [[] for _ in names]
        out: dict[str, np.ndarray] = {}
        for name, values in zip(names, columns, strict=True):
            field = fields[name]
            if field.type in NUMERIC:  # None (a missing value) is NaN as float64
                out[name] = np.array(values, np.float64).astype(np.float32).reshape(size, 1)
            elif field.type == "image":
                shape = field.shape or []
                out[name] = np.frombuffer(b"".join(values), np.uint8).reshape(-1, *shape)
            elif field.type == "series":
                out[name] = np.array(values, dtype=np.float32).reshape(size, -1)
            else:
                column = np.empty((size, 1), object)
                column[:, 0] = ["" if v is None else v for v in values]
                out[name] = column
        return out

    @cached_property
    def texts(self) -> list[str]:
        """The fields a tokenizer in the graph reads."""
        return [name for name, field in self.spec.fields.items() if field.type == "text"]

    def predict(self, records: list[BaseModel], chunk: int = 0) -> dict[str, np.ndarray]:
        """The graph's outputs for the records, in their order (`run_chunked`)."""
        return self.run_chunked(self.feeds(records), chunk)

    def run_chunked(
        self, feeds: dict[str, np.ndarray], chunk: int = 0, outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for a batch's tensors, in the batch's order: in length-sorted
        chunks where `sorted_by_length` finds they pay, else in one run."""
        order = self.sorted_by_length(feeds, chunk)
        if order is None:
            return self.run(feeds, outputs)
        parts = [
            self.run(
                {name: array[order[start : start + chunk]] for name, array in feeds.items()},
                outputs,
            )
            for start in range(0, len(order), chunk)
        ]
        back = np.empty(len(order), np.intp)
        back[order] = np.arange(len(order))
        return {name: np.concatenate([part[name] for part in parts])[back] for name in parts[0]}

    def sorted_by_length(self, feeds: dict[str, np.ndarray], chunk: int) -> np.ndarray | None:
        """The rows shortest text first, or None where chunks do not pay. A graph that reads
        text pads a batch to its longest text (the tokenizer's [rows, most tokens] tensor): a
        1000-review batch, the longest 8,055 characters and the median 279, ran in 81 ms at
        once and in 38 ms sorted by length in chunks of 128 (54 ms in chunks unsorted). So
        chunks go where they spare more than PADDING_MIN characters of padding; otherwise the
        batch goes whole (chunk 0: always): each run costs its overhead again (titanic's
        names, 80 characters at most: 5% slower in chunks)."""
        texts = [feeds[name] for name in self.texts if name in feeds]
        size = len(texts[0]) if texts else 0
        if chunk <= 0 or size <= chunk or any(t.size != size for t in texts):
            return None
        lengths = np.zeros(size, np.int64)
        for column in texts:  # "" for a missing text
            lengths += np.fromiter(map(len, column.reshape(-1)), np.int64, size)
        order = np.argsort(lengths, kind="stable")
        ends = np.minimum(np.arange(chunk, size + chunk, chunk), size)
        longest = lengths[order][ends - 1]  # each chunk's padded width
        spared = size * int(longest[-1]) - chunk * int(longest.sum())
        return order if spared >= PADDING_MIN else None

    @cached_property
    def served_outputs(self) -> list[str]:
        """The graph's outputs but those only the pipeline reads (a recommender's rating of
        every item, for scoring held-out ratings)."""
        return [o.name for o in self.session.get_outputs() if o.name not in factors.EVALUATION]

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = outputs or self.served_outputs
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def format(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per record: label + probability (binary), label + probabilities, value, label +
        anomaly score + the threshold it was decided with, segment + distance + profile, or
        the top-k recommendations (item id, name, predicted rating) + whether it is the
        popularity fallback, or a forecast (one value per step of the horizon), or the
        search results (document id, text, cosine similarity), best first."""
        if self.spec.task == "regression":
            return [{"value": v} for v in result["prediction"].reshape(-1).tolist()]
        if self.spec.task == "forecast":  # the horizon's steps after the record's origin
            return [{"forecast": row} for row in result["forecast"].tolist()]
        if self.spec.task == "retrieval":  # fewer than k only if the index found fewer
            item = self.spec.target.item
            return [
                {
                    "results": [
                        {item: i, "text": t, "score": s}
                        for i, t, s in zip(ids, texts, scores, strict=True)
                        if i != ""
                    ]
                }
                for ids, texts, scores in zip(
                    result["ids"].tolist(),
                    result["texts"].tolist(),
                    result["scores"].tolist(),
                    strict=True,
                )
            ]
        if self.spec.task == "recommendation":
            item, name = self.spec.target.item, self.spec.target.item_name
            return [
                {
                    "recommendations": [
                        {item: i, name: n.decode() if isinstance(n, bytes) else n, "score": s}
                        for i, n, s in zip(ids, names, scores, strict=True)
                    ],
                    "fallback": cold,
                }
                for ids, names, scores, cold in zip(
                    result["items"].tolist(),
                    result["names"].tolist(),
                    result["scores"].tolist(),
                    result["fallback"].reshape(-1).tolist(),
                    strict=True,
                )
            ]
        if self.spec.task == "clustering":  # the nearest segment, its distance and profile
            segments = self.segments
            return [
                {"label": segments[int(lab)]["segment"], "distance": min(d),
                 "profile": segments[int(lab)]}
                for lab, d in zip(
                    result["label"].reshape(-1).tolist(), result["distances"].tolist(), strict=True
                )
            ]  # fmt: skip
        classes = self.spec.class_names
        if self.spec.task == "anomaly":
            threshold = self.threshold
            return [
                {"label": classes[int(lab)], "score": s, "threshold": threshold}
                for lab, s in zip(
                    result["label"].reshape(-1).tolist(),
                    result["score"].reshape(-1).tolist(),
                    strict=True,
                )
            ]
        labels = result["label"].reshape(-1).tolist()
        probabilities = result["probabilities"].tolist()
        if self.spec.task == "binary":
            return [
                {"label": classes[int(lab)], "probability": p[1]}
                for lab, p in zip(labels, probabilities, strict=True)
            ]
        return [
            {"label": classes[int(lab)], "probabilities": dict(zip(classes, p, strict=True))}
            for lab, p in zip(labels, probabilities, strict=True)
        ]

    def summary(self, result: dict[str, np.ndarray]) -> tuple[list[float], list[str]]:
        """What the distribution metrics keep: (P(positive) / P(top class) / value, labels)."""
        return summarize(self.spec, result)


def load(spec: ModelSpec, artifact: Artifact) -> LoadedModel:
    """A session on the artifact, refused unless it is this catalog entry's model."""
    try:
        session = _session(str(artifact.path))
    except Exception as exc:  # ONNX Runtime raises its own types for unreadable graphs
        raise ArtifactRefused(
            f"refusing {artifact.path}: ONNX Runtime cannot load it ({exc})"
        ) from exc
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("model") != spec.key:
        raise ArtifactRefused(
            f"refusing {spec.key} v{artifact.version}: the artifact says it is model "
            f"{meta.get('model')!r}, not {spec.key!r}"
        )
    trained = {n: f.get("type") for n, f in json.loads(meta.get("fields", "{}")).items()}
    expected = {n: f.type for n, f in spec.fields.items()}
    if trained != expected:
        raise ArtifactRefused(
            f"refusing {spec.key} v{artifact.version}: it was trained on fields {trained}, "
            f"but the catalog entry now has {expected}; retrain or roll the catalog back"
        )
    if spec.task == "clustering" and "segments" not in meta:
        raise ArtifactRefused(
            f"refusing {spec.key} v{artifact.version}: a segmentation without segment profiles"
        )
    served: ort.InferenceSession | retrieval.RetrievalSession = session
    if spec.task == "retrieval":  # text in: the tokenizer before the graph, the index after
        import faiss  # the search's own dependency (the retrieval flavor imports it anyway)

        # one query is tiny, as for the graph's single thread: FAISS's OpenMP team would spin
        # on every core after each search, taking them from every other process on the machine
        faiss.omp_set_num_threads(1)
        try:
            served = retrieval.RetrievalSession(session, retrieval.Corpus.open(artifact.directory))
        except (OSError, RuntimeError, ValueError) as exc:  # faiss raises RuntimeError
            raise ArtifactRefused(
                f"refusing {spec.key} v{artifact.version}: cannot open its search index ({exc})"
            ) from exc
    inputs = {i.name for i in served.get_inputs()}
    if inputs != set(spec.fields):
        raise ArtifactRefused(f"refusing {spec.key} v{artifact.version}: graph inputs {inputs}")
    return LoadedModel(spec, artifact, served)
