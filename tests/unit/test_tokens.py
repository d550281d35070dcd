"""A transformer's graph behind its tokenizer: texts in, each answer in its text's place.

A small graph stands in for the transformer (it counts each text's tokens and sums their
ids), under the real MiniLM tokenizer the package ships."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from contract.tasks.common import served_as_is
from contract.tokens import ENCODE_BATCH, TokenizedSession, tokenizer
from pipelines.flavors.weights import minilm_dir

MAX_TOKENS = 16


def counting_graph(metadata: bool = True, **extra: str) -> ort.InferenceSession:
    """input_ids, attention_mask [N, T] -> tokens [N] (the mask's sum), id_sum [N];
    `extra`: more metadata (a quantized graph's)."""
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "axis"], ["tokens"], keepdims=0),
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis"], ["id_sum"], keepdims=0),
    ]
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch"]) for n in ("tokens", "id_sum")
    ]
    graph = helper.make_graph(nodes, "count", [ids, mask], outputs, initializer=[axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    if metadata:
        definition = (minilm_dir() / "tokenizer.json").read_text()
        fields = json.dumps({"review": {"type": "text"}})
        meta = {"tokenizer": definition, "max_tokens": str(MAX_TOKENS), "fields": fields}
        helper.set_model_props(model, meta | extra)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_each_text_gets_its_own_answer_whatever_the_batches() -> None:
    session = served_as_is(counting_graph(), None)
    assert isinstance(session, TokenizedSession)
    assert [i.name for i in session.get_inputs()] == ["review"]
    rng = np.random.default_rng(0)  # more texts than a batch, of mixed lengths, unsorted
    texts = [" ".join(["tasty"] * int(n)) for n in rng.integers(0, 30, ENCODE_BATCH * 2 + 5)]
    tokens, id_sum = session.run(None, {"review": np.array(texts, object).reshape(-1, 1)})
    tok = tokenizer((minilm_dir() / "tokenizer.json").read_text(), MAX_TOKENS)
    for text, count, total in zip(texts, tokens, id_sum, strict=True):
        (encoded,) = tok.encode_batch([text])  # alone: padded to nothing but itself
        assert count == len(encoded.ids) <= MAX_TOKENS and total == sum(encoded.ids)


def test_no_text_gives_empty_answers_and_a_missing_text_is_empty() -> None:
    session = TokenizedSession(counting_graph())
    tokens, id_sum = session.run(None, {"review": np.empty((0, 1), object)})
    assert tokens.shape == (0,) and id_sum.shape == (0,)
    (tokens,) = session.run(["tokens"], {"review": np.array([[None]], object)})
    assert tokens.tolist() == [2]  # [CLS] [SEP]


def test_a_graph_without_a_tokenizer_is_served_as_it_is() -> None:
    plain = counting_graph(metadata=False)
    assert served_as_is(plain, None) is plain
    with pytest.raises(ValueError, match="lacks"):
        TokenizedSession(plain)


def test_a_dynamically_quantized_graph_reads_each_text_alone() -> None:
    """Its int8 ranges are taken from the whole batch as it runs, so beside other texts a
    text's answer would change (contract/tokens.py DYNAMIC): each run reads one text,
    padded to nothing; any other graph reads batches of similar length."""
    runs: list[tuple[int, ...]] = []
    graph = counting_graph(quantization="dynamic", precision="int8")
    run = graph.run

    def noting(names: list[str], feeds: dict[str, np.ndarray], *args: object) -> list[object]:
        runs.append(feeds["input_ids"].shape)  # [batch, tokens]
        return run(names, feeds, *args)  # type: ignore[no-any-return]

    graph.run = noting  # type: ignore[method-assign]
    texts = ["tasty", "not tasty at all, the worst tea", "fine"]
    session = TokenizedSession(graph)
    tokens, _ = session.run(None, {"review": np.array(texts, object).reshape(-1, 1)})
    assert session.batch == 1 and [n for n, _ in runs] == [1, 1, 1]
    assert sorted(t for _, t in runs) == sorted(tokens.tolist())  # no padding
    assert TokenizedSession(counting_graph()).batch == ENCODE_BATCH
