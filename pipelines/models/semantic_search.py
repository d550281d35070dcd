"""Semantic search over fine-food reviews: sentence embeddings and a FAISS index.

The encoder is all-MiniLM-L6-v2, used as shipped (pipelines/estimators/sentence_index.py): the
training split's reviews are embedded and indexed, the test split's reviews are the queries
that judge the index (recall@10 against exact search) and the export (ONNX against PyTorch).
"""

import pandas as pd

from contract.catalog import ModelSpec
from pipelines.estimators.sentence_index import Encoder
from pipelines.flavors import retrieval as FLAVOR
from pipelines.flavors.weights import minilm_dir

__all__ = ["FLAVOR", "build", "records"]
TEXT = "review"


def build(spec: ModelSpec) -> Encoder:
    return Encoder(minilm_dir(), **spec.params)


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """One record per review, its text as the model's text field; HTML line breaks (the
    source keeps the site's <br />) become new lines."""
    field = FLAVOR.text_field(spec)
    text = source[TEXT].str.replace(r"\s*<br\s*/?>\s*", "\n", regex=True).str.strip()
    return source.drop(columns=TEXT).assign(**{field: text})
