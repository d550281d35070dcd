"""A search as it is served: tokenizer -> ONNX encoder -> FAISS index, behind an ONNX
Runtime session's interface (`RetrievalSession`), text in, ranked documents out.

The retrieval flavor (pipelines/flavors/retrieval.py) builds the index and the encoder's
graph; the pipeline's checks and the service both run this session, so what is checked is
what is served. It needs onnxruntime, tokenizers and faiss, not PyTorch.
"""

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tokenizers import Tokenizer

log = logging.getLogger(__name__)
INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.parquet"
SERVED_FILES = (INDEX_FILE, DOCUMENTS_FILE)  # registered beside model.onnx
OUTPUTS = ("ids", "texts", "scores")
PROGRESS_EVERY_S = 15.0
ENCODE_BATCH = 32  # texts per ONNX run: a batch pads to its longest


def tokenizer(definition: str, max_tokens: int) -> Tokenizer:
    """The encoder's WordPiece tokenizer (tokenizer.json), truncating and padding batches."""
    tok = Tokenizer.from_str(definition)
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def encoder_inputs(tok: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The encoder's own inputs for a batch, padded to its longest text: what a client of
    the encoder alone (Triton) sends."""
    encoded = tok.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }


def graph_tokenizer(graph: Path) -> Tokenizer:
    """The tokenizer an exported encoder carries in its metadata."""
    meta = {p.key: p.value for p in onnx.load_model(graph).metadata_props}
    return tokenizer(meta["tokenizer"], int(meta["max_tokens"]))


@dataclass
class Corpus:
    """The served index and the documents it points at."""

    index: Any
    documents: pd.DataFrame

    @classmethod
    def open(cls, directory: Path) -> "Corpus":
        index = faiss.read_index(str(directory / INDEX_FILE))
        documents = pd.read_parquet(directory / DOCUMENTS_FILE)
        if index.ntotal != len(documents):
            raise ValueError(
                f"{directory}: the index holds {index.ntotal} vectors but "
                f"{DOCUMENTS_FILE} has {len(documents)} documents"
            )
        return cls(index, documents)

    def search(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities [N, k], positions [N, k]); -1 where fewer than k were found."""
        scores, positions = self.index.search(np.ascontiguousarray(embeddings, np.float32), k)
        return np.asarray(scores), np.asarray(positions)


class Arg(NamedTuple):
    """An input or output as ONNX Runtime describes one (NodeArg)."""

    name: str
    type: str
    shape: list[Any]


class RetrievalSession:
    """Tokenizer -> ONNX encoder -> FAISS, with an ONNX Runtime session's interface: the
    text field in ([N, 1] strings), the top-k `ids`, `texts` (strings) and `scores`
    (cosine similarities) out, and the query's `embedding`."""

    def __init__(self, session: ort.InferenceSession, corpus: Corpus) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        missing = {"tokenizer", "max_tokens", "top_k", "fields"} - set(meta)
        if missing:
            raise ValueError(f"not a retrieval encoder: its metadata lacks {sorted(missing)}")
        self.session = session
        self.corpus = corpus
        self.tokenizer = tokenizer(meta["tokenizer"], int(meta["max_tokens"]))
        self.top_k = min(int(meta["top_k"]), len(corpus.documents))
        (self.field,) = json.loads(meta["fields"])
        (embedding,) = session.get_outputs()
        self.dimension = embedding.shape[-1]
        self._ids = corpus.documents["id"].astype(str).to_numpy(object)
        self._texts = corpus.documents["text"].astype(str).to_numpy(object)

    def get_modelmeta(self) -> Any:
        return self.session.get_modelmeta()

    def get_inputs(self) -> list[Arg]:
        return [Arg(self.field, "tensor(string)", ["batch", 1])]

    def get_outputs(self) -> list[Arg]:
        k = self.top_k
        return [
            Arg("embedding", "tensor(float)", ["batch", self.dimension]),
            Arg("ids", "tensor(string)", ["batch", k]),
            Arg("texts", "tensor(string)", ["batch", k]),
            Arg("scores", "tensor(float)", ["batch", k]),
        ]

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return encoder_inputs(self.tokenizer, texts)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """ONNX embeddings [N, dim]: texts tokenized, run in batches of similar length (a
        batch pads to its longest text)."""
        encoded = self.tokenizer.encode_batch(list(texts))
        lengths = np.array([sum(e.attention_mask) for e in encoded])
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(encoded), self.dimension), np.float32)
        started = last = time.perf_counter()
        for start in range(0, len(order), ENCODE_BATCH):
            if time.perf_counter() - last > PROGRESS_EVERY_S:  # a pipeline's thousands
                last = time.perf_counter()
                log.info("encoding (ONNX): %d of %d (%.0fs)", start, len(order), last - started)
            rows = order[start : start + ENCODE_BATCH]
            width = int(lengths[rows].max())
            feeds = {
                "input_ids": np.array([encoded[i].ids[:width] for i in rows], np.int64),
                "attention_mask": np.array(
                    [encoded[i].attention_mask[:width] for i in rows], np.int64
                ),
            }
            (out[rows],) = self.session.run(["embedding"], feeds)
        return out

    def run(
        self, names: list[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        names = names or [o.name for o in self.get_outputs()]
        texts = ["" if t is None else str(t) for t in feeds[self.field].reshape(-1)]
        embedding = self.embed(texts)
        result: dict[str, np.ndarray] = {"embedding": embedding}
        if set(names) & set(OUTPUTS):
            scores, positions = self.corpus.search(embedding, self.top_k)
            found = positions >= 0
            safe = np.where(found, positions, 0)
            result["ids"] = np.where(found, self._ids[safe], "")
            result["texts"] = np.where(found, self._texts[safe], "")
            result["scores"] = np.where(found, scores, -1.0).astype(np.float32)
        return [result[name] for name in names]


def session(graph: onnx.ModelProto, directory: Path) -> RetrievalSession:
    """The served pipeline on a graph and the directory holding its index and documents."""
    encoder = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return RetrievalSession(encoder, Corpus.open(directory))
