"""ONNX Runtime on a registered artifact: validated records in, per-record predictions out."""

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from contract.catalog import INPUT_EMBEDDING, ModelSpec
from contract.feeds import each_record, input_names, one_at_a_time, record_feeds
from contract.search import RetrievalSession
from contract.tasks.common import ServedGraph
from services.api.store import Artifact, ArtifactRefused

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
    session: ort.InferenceSession | RetrievalSession

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
    def graph(self) -> ServedGraph:
        """What export wrote into the graph's metadata, read once."""
        return ServedGraph(self.spec, dict(self.session.get_modelmeta().custom_metadata_map))

    @property
    def segments(self) -> list[dict[str, Any]]:
        """A segmentation's profile of each segment, in label order (from the artifact)."""
        return self.graph.segments

    @property
    def threshold(self) -> float | None:
        """The decision threshold the graph's label applies (tuned classifiers, detectors)."""
        return self.graph.threshold

    @property
    def gate_metric(self) -> tuple[str, float]:
        name = self.spec.gate_metric
        return name, float(self.artifact.metrics.get(name, math.nan))

    def feeds(self, records: list[BaseModel]) -> dict[str, np.ndarray]:
        """One tensor per field: the contract's one mapping (contract/feeds.py)."""
        return record_feeds(records, self.spec)

    @cached_property
    def texts(self) -> list[str]:
        """The fields a tokenizer in the graph reads."""
        return [name for name, field in self.spec.fields.items() if field.type == "text"]

    def predict(self, records: list[BaseModel], chunk: int = 0) -> dict[str, np.ndarray]:
        """The graph's outputs for the records, in their order (`run_chunked`); photos and
        recordings a record at a time (contract.feeds.one_at_a_time)."""
        return self.run_chunked(self.feeds(records), chunk)

    @cached_property
    def alone(self) -> bool:
        return one_at_a_time(self.spec)

    def run_chunked(
        self, feeds: dict[str, np.ndarray], chunk: int = 0, outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's outputs for a batch's tensors, in the batch's order: in length-sorted
        chunks where `sorted_by_length` finds they pay, else in one run."""
        if self.alone:  # photos, recordings: each as it would be served alone
            parts = [self.run(record, outputs) for record in each_record(feeds, self.spec)]
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
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
        scoring = self.spec.task_kind.PIPELINE_OUTPUTS
        return [o.name for o in self.session.get_outputs() if o.name not in scoring]

    def run(
        self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = outputs or self.served_outputs
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def format(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Per record, the task's answer (contract/tasks/<task>.py `format`)."""
        return self.spec.task_kind.format(result, self)

    def drift_inputs(self, result: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """What the prediction log keeps of each record's outputs beside its inputs for the
        drift view: an image model's embedding ({} per record where the graph has none or
        the request asked for other outputs)."""
        found = result.get(INPUT_EMBEDDING)
        if found is None:
            size = len(next(iter(result.values()))) if result else 0
            return [{} for _ in range(size)]
        return [{INPUT_EMBEDDING: row} for row in np.asarray(found).tolist()]


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
    try:  # what the task serves on the graph: a search opens its index beside it
        served = spec.task_kind.serve(session, artifact.directory)
    except (OSError, RuntimeError, ValueError) as exc:  # faiss raises RuntimeError
        raise ArtifactRefused(f"refusing {spec.key} v{artifact.version}: {exc}") from exc
    if isinstance(served, RetrievalSession):
        import faiss  # the search's own dependency

        # one query is tiny, as for the graph's single thread: FAISS's OpenMP team would spin
        # on every core after each search, taking them from every other process on the machine
        faiss.omp_set_num_threads(1)
    inputs = {i.name for i in served.get_inputs()}
    if inputs != set(input_names(spec)):
        raise ArtifactRefused(f"refusing {spec.key} v{artifact.version}: graph inputs {inputs}")
    return LoadedModel(spec, artifact, served)
