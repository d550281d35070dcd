"""A search as it is served: tokenizer -> ONNX encoder -> FAISS index, behind an ONNX
Runtime session's interface (`RetrievalSession`), text in, ranked documents out.

The retrieval flavor (pipelines/flavors/retrieval.py) builds the index and the encoder's
graph; the pipeline's checks and the service both run this session, so what is checked is
what is served. It needs onnxruntime, tokenizers and faiss, not PyTorch.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort
import pandas as pd

from contract.tokens import Arg, TokenizedSession

INDEX_FILE = "index.faiss"
DOCUMENTS_FILE = "documents.parquet"
SERVED_FILES = (INDEX_FILE, DOCUMENTS_FILE)  # registered beside model.onnx
OUTPUTS = ("ids", "texts", "scores")


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


class RetrievalSession:
    """Tokenizer -> ONNX encoder -> FAISS, with an ONNX Runtime session's interface: the
    text field in ([N, 1] strings), the top-k `ids`, `texts` (strings) and `scores`
    (cosine similarities) out, and the query's `embedding`."""

    def __init__(self, session: ort.InferenceSession, corpus: Corpus) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        if "top_k" not in meta:
            raise ValueError("not a retrieval encoder: its metadata lacks ['top_k']")
        self.encoder = TokenizedSession(session)  # the tokenizer before the graph
        self.session = session
        self.corpus = corpus
        self.top_k = min(int(meta["top_k"]), len(corpus.documents))
        self.field = self.encoder.field
        (embedding,) = session.get_outputs()
        self.dimension = embedding.shape[-1]
        self._ids = corpus.documents["id"].astype(str).to_numpy(object)
        self._texts = corpus.documents["text"].astype(str).to_numpy(object)

    def get_modelmeta(self) -> Any:
        return self.session.get_modelmeta()

    def get_inputs(self) -> list[Arg]:
        return self.encoder.get_inputs()

    def get_outputs(self) -> list[Arg]:
        k = self.top_k
        return [
            Arg("embedding", "tensor(float)", ["batch", self.dimension]),
            Arg("ids", "tensor(string)", ["batch", k]),
            Arg("texts", "tensor(string)", ["batch", k]),
            Arg("scores", "tensor(float)", ["batch", k]),
        ]

    def tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.encoder.tokens(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """ONNX embeddings [N, dim] of the texts (tokenized, in batches of similar length)."""
        column = np.array(texts, dtype=object).reshape(-1, 1)
        (embedding,) = self.encoder.run(["embedding"], {self.field: column})
        return np.asarray(embedding, np.float32)

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


def session(graph: Any, directory: Path) -> RetrievalSession:
    """The served pipeline on a graph and the directory holding its index and documents."""
    encoder = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return RetrievalSession(encoder, Corpus.open(directory))
