"""Retrieval: the best-matching documents of a text query, with their cosine similarity
(semantic_search). A record is a text; the training split's texts are the searched
documents (`target.item` their id), the test split's the queries; the target is a label
that judges relevance (results sharing the query's label)."""

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.tasks.common import (
    SCORE,
    Plot,
    Served,
    no_class_names,
    no_labels,
    no_margin,
    output_as_native,
    positive_flags,
    two_valued,
)
from contract.tasks.outcomes import at_k, items_outcome
from contract.tasks.outcomes import item_outcomes as true_outcomes
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

SUPERVISED, STRATIFIED, LABELS_SERVED = True, True, False
# an outcome is a set of ids, not a row the model was fitted on
LEARNS_FROM_OUTCOMES = False
NATIVE = "embeddings"  # the queries' embeddings [N, dim]
RELATIVE_PARITY = False
REFERENCE_SPLIT = "test"  # its training rows are the corpus (each its own best match)
BULK = False  # people search one query at a time; a batch of searches is bulk work
# the served score (the prediction histogram): a value, not a probability-like [0, 1]
SCORE_VALUES = False
DISCRETE_TARGET = True  # the model card shows the target's balance
# how permutation importance scores a shuffled field (a scikit-learn scorer name), or ""
IMPORTANCE_SCORING = ""

# what it shares with other task kinds (contract/tasks/common.py)
class_names = no_class_names  # results are ranked, not classed
encode_target = positive_flags
target_column = two_valued
labels = no_labels

__all__ = ["evidently_view", "targets", "true_outcomes"]
QUERY_WORDS = 20


def validate(spec: "ModelSpec") -> None:
    if not (spec.target.item and [f.type for f in spec.fields.values()] == ["text"]):
        raise ValueError(
            "a retrieval task needs target.item (the document id) and exactly one field, "
            "the text (type text)"
        )


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Nothing from the embeddings alone: a search is judged against exact search of its
    index and by relevance, which its flavor's `report` measures."""
    return {}


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    return {
        "recall_by_nprobe.png": ("recall_by_nprobe", (views["nprobe"],)),
        "similarity.png": ("similarity", (views["scores"], views["relevant_by_rank"])),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    """The results, best first: fewer than k only if the index found fewer."""
    item = served.spec.target.item
    return [
        {
            "results": [
                {item: i, "text": t, "score": s}
                for i, t, s in zip(ids, texts, scores, strict=True)
                if i != ""
            ]
        }
        for ids, texts, scores in zip(
            result["ids"].tolist(), result["texts"].tolist(), result["scores"].tolist(), strict=True
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The best match's similarity: low when queries drift away from the corpus (none
    where the index found nothing)."""
    results = prediction.get("results") or []
    return {SCORE: results[0]["score"] if results else None}


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "; never predicted: it judges relevance (results sharing the query's label)",
        "artifact": (
            "The artifact is the sentence encoder as one ONNX graph (its tokenizer in the "
            "graph's\nmetadata), with the FAISS index and the documents registered beside it, "
            "each with a\nchecksum tag; the encoder is checked against PyTorch on every test "
            "query at export."
        ),
    }


def as_query(text: str, words: int = QUERY_WORDS) -> str:
    """A search query from a held-out text: its first sentence, at most `words` words."""
    first = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0]
    return " ".join(first.split()[:words])


def payload(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A search is asked queries, not whole held-out reviews."""
    return [{k: as_query(v) for k, v in r.items()} for r in records]


# graph outputs only the pipeline reads (the service never returns them)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
# numerical columns of the outputs' drift view besides the score (`answered`)
OUTPUT_VIEW: tuple[str, ...] = ()
# the graph outputs the native prediction is read from (export's parity, the gate)
JUDGED_OUTPUTS = ("embedding",)
decisive = no_margin


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The native prediction from the graph's JUDGED_OUTPUTS."""
    return output_as_native(outputs, "embedding", vector=False)


def serve(session: Any, directory: Path) -> Any:
    """Text in: the tokenizer before the encoder's graph, the FAISS index after it
    (contract/search.py), opened from the files registered beside the graph."""
    from contract.search import Corpus, RetrievalSession  # faiss: the search's alone

    try:
        return RetrievalSession(session, Corpus.open(directory))
    except (OSError, RuntimeError, ValueError) as exc:  # faiss raises RuntimeError
        raise ValueError(f"cannot open its search index ({exc})") from exc


def outcome(spec: "ModelSpec") -> Any:
    """The documents (`target.item` ids) relevant to the query, as a person judged them."""
    return items_outcome()


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """The results against the relevant documents: precision, recall, hit rate at k, MRR,
    named relevance_*: the registered recall_at_k is recall against exact search."""
    item = spec.target.item
    ranked = [[str(r[item]) for r in p["results"]] for p in predictions]
    return at_k(ranked, outcomes, int(spec.params["top_k"]), prefix="relevance_")
