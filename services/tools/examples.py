"""Request bodies from data: JSON records exactly as a client sends them."""

import base64
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contract.catalog import ModelSpec

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ENCODED = ("photo", "audio")  # field types a client sends as their encoded file's bytes


def to_png(pixels: np.ndarray) -> str:
    """A base64 PNG of uint8 grey levels, the other way images may arrive."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def as_records(frame: pd.DataFrame, spec: ModelSpec, png: bool = False) -> list[dict[str, Any]]:
    """null for missing values, ints for int fields, images as nested lists (or base64 PNG),
    photos and recordings as base64, series as lists of numbers."""
    out = []
    for row in frame.to_dict("records"):
        record: dict[str, Any] = {}
        for name, field in spec.fields.items():
            value = row[name]
            if field.type == "image":
                pixels = np.frombuffer(value, np.uint8).reshape(field.shape or [])
                record[name] = to_png(pixels) if png else pixels.tolist()
            elif field.type in ENCODED:  # the picture (PNG, JPEG), the recording (WAV, FLAC)
                record[name] = base64.b64encode(value).decode()
            elif field.type == "series":
                record[name] = np.asarray(value, dtype=np.float64).tolist()
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                record[name] = None
            elif field.type == "int":
                record[name] = int(value)
            elif field.type == "float":
                record[name] = float(value)
            else:
                record[name] = str(value)
        out.append(record)
    return out


def entity_rows(frame: pd.DataFrame, spec: ModelSpec) -> list[dict[str, Any]]:
    """Each row's entity key and request fields: what the online store is read with."""
    assert spec.features is not None
    key, request = spec.features.entity, spec.features.request
    records = as_records(frame, spec) if request else [{} for _ in range(len(frame))]
    return [
        {key: str(entity)} | {name: record[name] for name in request}
        for entity, record in zip(frame[key], records, strict=True)
    ]


def as_entities(frame: pd.DataFrame, spec: ModelSpec) -> dict[str, Any]:
    """The entity-keyed body for the same rows: ids (and the request fields, if any)."""
    assert spec.features is not None
    rows, key = entity_rows(frame, spec), spec.features.entity
    return {"entities": rows} if spec.features.request else {f"{key}s": [r[key] for r in rows]}


# OIP v2's datatype of each numpy kind as_tensors makes (what the exported graphs take)
OIP_DATATYPES = {"f": "FP32", "O": "BYTES", "u": "UINT8", "i": "INT64", "b": "BOOL"}


def as_tensors(frame: pd.DataFrame, spec: ModelSpec, binary: bool = False) -> dict[str, np.ndarray]:
    """The rows as a client's OIP v2 input tensors: the graph's tensors (contract.feeds), but a
    photo or a recording as one BYTES element per record, its encoded bytes (base64 text where
    the body is JSON), without the sizes the service works out itself."""
    from contract.feeds import onnx_feeds

    encoded = [name for name, field in spec.fields.items() if field.type in ENCODED]
    others = {name: field for name, field in spec.fields.items() if name not in encoded}
    feeds = onnx_feeds(frame, spec.model_copy(update={"fields": others})) if others else {}
    for name in encoded:
        values = [v if binary else base64.b64encode(v).decode() for v in frame[name]]
        feeds[name] = np.array(values, dtype=object)
    return {name: feeds[name] for name in spec.fields}


def client_tokenizer(graph: Path) -> "Tokenizer | None":
    """The tokenizer a client of a transformer's graph alone (Triton) tokenizes with, from
    the graph's metadata in one read of the file (contract.tokens.graph_tokenizer's, which
    expects one); None for a graph that takes no token ids."""
    import onnx

    from contract.tokens import tokenizer

    meta = {p.key: p.value for p in onnx.load_model(str(graph)).metadata_props}
    return tokenizer(meta["tokenizer"], int(meta["max_tokens"])) if "tokenizer" in meta else None
