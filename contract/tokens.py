"""A transformer's graph as it is served: its WordPiece tokenizer before it, behind an ONNX
Runtime session's interface (`TokenizedSession`), text in.

ONNX has no WordPiece tokenizer, so an exported transformer takes token ids and their mask,
and carries its tokenizer (tokenizer.json) and token limit in its metadata. The service and
the pipeline's checks put the tokenizer before the graph here, so what is checked is what is
served: a fine-tuned classifier (review_sentiment_transformer) on its own, a search's encoder
(contract/search.py) before its index. It needs onnxruntime and tokenizers, not PyTorch.
"""

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from tokenizers import Tokenizer

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 15.0
ENCODE_BATCH = 32  # texts per ONNX run: a batch pads to its longest
# A dynamically quantized graph (pipelines/quantize.py) takes each activation's int8 range
# from the whole batch as it runs: a text's answer would depend on its batchmates (0.027 of
# probability on the fine-tuned classifier's reviews), so such a graph reads each text alone
# (padded to nothing, which also makes single texts faster than padded batches)
DYNAMIC = {"quantization": "dynamic"}
TOKEN_INPUTS = ("input_ids", "attention_mask")  # what a transformer's graph takes
METADATA = ("tokenizer", "max_tokens", "fields")  # what its metadata must carry


def tokenizer(definition: str, max_tokens: int) -> Tokenizer:
    """The encoder's WordPiece tokenizer (tokenizer.json), truncating and padding batches."""
    tok = Tokenizer.from_str(definition)
    tok.enable_truncation(max_tokens)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


def encoder_inputs(tok: Tokenizer, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The graph's own inputs for a batch, padded to its longest text: what a client of the
    graph alone (Triton) sends."""
    encoded = tok.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encoded], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], np.int64),
    }


def graph_tokenizer(graph: Path) -> Tokenizer:
    """The tokenizer an exported transformer carries in its metadata."""
    meta = {p.key: p.value for p in onnx.load_model(graph).metadata_props}
    return tokenizer(meta["tokenizer"], int(meta["max_tokens"]))


def tokenized(session: Any) -> bool:
    """Whether a session's graph takes token ids and carries its tokenizer."""
    meta = session.get_modelmeta().custom_metadata_map
    return "tokenizer" in meta and {i.name for i in session.get_inputs()} == set(TOKEN_INPUTS)


class Arg(NamedTuple):
    """An input or output as ONNX Runtime describes one (NodeArg)."""

    name: str
    type: str
    shape: list[Any]


class TokenizedSession:
    """Tokenizer -> a transformer's graph, with an ONNX Runtime session's interface: its
    one text field in ([N, 1] strings), the graph's outputs out."""

    def __init__(self, session: Any) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        missing = set(METADATA) - set(meta)
        if missing:
            raise ValueError(f"not a tokenized transformer: its metadata lacks {sorted(missing)}")
        self.session = session
        self.tokenizer = tokenizer(meta["tokenizer"], int(meta["max_tokens"]))
        (self.field,) = json.loads(meta["fields"])
        alone = all(meta.get(k) == v for k, v in DYNAMIC.items())
        self.batch = 1 if alone else ENCODE_BATCH  # texts a run reads

    def get_modelmeta(self) -> Any:
        return self.session.get_modelmeta()

    def get_inputs(self) -> list[Arg]:
        return [Arg(self.field, "tensor(string)", ["batch", 1])]

    def get_outputs(self) -> list[Any]:
        return list(self.session.get_outputs())

    def tokens(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return encoder_inputs(self.tokenizer, texts)

    def run(
        self, names: list[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        """The graph's outputs `names` for the texts, run in batches of similar length (each
        text alone where the graph is dynamically quantized: DYNAMIC)."""
        names = names or [o.name for o in self.get_outputs()]
        texts = ["" if t is None else str(t) for t in feeds[self.field].reshape(-1)]

        def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(self.session.run(names, batch, run_options))

        return batched(self.tokenizer, texts, run, self.batch)


def batched(
    tok: Tokenizer,
    texts: Sequence[str],
    run: Callable[[dict[str, np.ndarray]], Sequence[Any]],
    size: int = ENCODE_BATCH,
) -> list[np.ndarray]:
    """`run`'s outputs (arrays [batch, ...]) on the texts' `batches` of `size`, put back in
    the texts' order: the ONNX graph's here, the PyTorch module's in the pipeline (same
    batches, same padding: parity compares like with like)."""
    result: list[np.ndarray] = []
    for rows, batch in batches(tok, list(texts) or [""], size):  # [""]: the outputs' shapes
        found = [np.asarray(f) for f in run(batch)]
        if not result:
            result = [np.empty((max(len(texts), 1), *f.shape[1:]), f.dtype) for f in found]
        for out, value in zip(result, found, strict=True):
            out[rows] = value
    return [out[: len(texts)] for out in result]


def batches(
    tok: Tokenizer, texts: Sequence[str], size: int = ENCODE_BATCH
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(positions, the graph's inputs) of the texts, `size` at a time in order of
    length, each batch padded to its longest (reviews run from 10 to 900 words: the same
    answers, several times faster than padding every batch to the longest of all)."""
    encoded = tok.encode_batch(list(texts))
    lengths = np.array([sum(e.attention_mask) for e in encoded])
    order = np.argsort(lengths, kind="stable")
    started = last = time.perf_counter()
    for start in range(0, len(order), size):
        if time.perf_counter() - last > PROGRESS_EVERY_S:  # a pipeline's thousands
            last = time.perf_counter()
            log.info("encoding: %d of %d (%.0fs)", start, len(order), last - started)
        rows = order[start : start + size]
        width = max(int(lengths[rows].max()), 1)
        yield (
            rows,
            {
                "input_ids": np.array([encoded[i].ids[:width] for i in rows], np.int64),
                "attention_mask": np.array(
                    [encoded[i].attention_mask[:width] for i in rows], np.int64
                ),
            },
        )
