"""TF-IDF + a linear classifier as a sparse ONNX graph: cost per token, not per vocabulary word.

skl2onnx converts TfidfVectorizer -> LogisticRegression to ONNX Runtime's TfIdfVectorizer,
which writes a dense [rows, vocabulary] matrix (35k columns for review_sentiment), then Mul
(the idf), Normalizer (L2) and LinearClassifier, each a pass over that matrix: a 1000-review
batch moves ~140 MB four times and ran at ~4,700 rows/s, whatever the reviews' length.

`sparsify(graph)` rewrites that chain after the tokenizer into lookups on the tokens that occur:

    tokens [N, T] --LabelEncoder--> unigram ids (-1 outside the vocabulary)
    adjacent id pairs --LabelEncoder--> bigram columns;  unigram ids --Gather--> their columns
    (row, column) keys --Unique--> term counts per row
    counts x idf --ScatterElements(add) per row--> w . x and |x|^2
    p = sigmoid(w . x / |x| + b)

which is what sklearn computes (TfidfTransformer's L2 norm; a row without a known term keeps
a zero vector). Only unigrams and bigrams without skips convert, and only a binary
classifier with a logistic output: anything else keeps skl2onnx's dense graph. Export's
parity check on the test split compares the rewritten graph with sklearn as for any model.
"""

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


CHAIN = ("TfIdfVectorizer", "Mul", "Normalizer", "LinearClassifier")


def _start(graph: onnx.GraphProto) -> int | None:
    """Where TfIdfVectorizer -> Mul(idf) -> Normalizer(L2) -> LinearClassifier starts."""
    ops = [n.op_type for n in graph.node]
    for start in range(len(ops) - 3):
        if tuple(ops[start : start + 4]) == CHAIN:
            nodes = graph.node[start : start + 4]
            if all(nodes[i].output[0] in nodes[i + 1].input for i in range(3)):
                return start
    return None


def convertible(nodes: list[onnx.NodeProto]) -> bool:
    """Whether the chain's settings are the ones the sparse graph computes."""
    vectorizer, _, normalizer, linear = (_attrs(n) for n in nodes)
    counts = list(vectorizer["ngram_counts"])
    return (
        vectorizer["mode"] == b"TF"
        and vectorizer["min_gram_length"] == 1
        and vectorizer["max_gram_length"] in (1, 2)
        and vectorizer["max_skip_count"] == 0
        and len(counts) == vectorizer["max_gram_length"]
        and "pool_strings" in vectorizer
        and normalizer["norm"] == b"L2"
        and linear["post_transform"] == b"LOGISTIC"
        and list(linear["classlabels_ints"]) == [0, 1]
        and linear.get("multi_class", 0) == 0
    )


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))


def sparsify(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with the dense chain replaced (see the module); unchanged if it does
    not match."""
    graph = model.graph
    position = _start(graph)
    if position is None:
        return model
    chain = [graph.node[position + i] for i in range(4)]
    if not convertible(chain):
        return model
    vectorizer_node, mul_node, _, linear_node = chain
    vectorizer, linear = _attrs(vectorizer_node), _attrs(linear_node)
    idf_name = next(i for i in mul_node.input if i != vectorizer_node.output[0])
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    idf = initializers[idf_name].astype(np.float32).reshape(-1)
    pool = [s.decode("utf-8") for s in vectorizer["pool_strings"]]
    columns = np.asarray(vectorizer["ngram_indexes"], np.int64)
    starts = [*vectorizer["ngram_counts"], len(pool)]
    unigrams = pool[starts[0] : starts[1]]
    coefficients = np.asarray(linear["coefficients"], np.float32).reshape(2, idf.shape[0])
    bias = np.float32(linear["intercepts"][1])
    # terms numbered as the pool lists them: unigram k is term k, bigram k term len(unigrams) + k
    terms = len(columns)
    term_idf = idf[columns].astype(np.float32)
    term_weight = (coefficients[1][columns] * term_idf).astype(np.float32)  # w_j idf_j
    nodes = [
        helper.make_node(
            "LabelEncoder",
            [vectorizer_node.input[0]],
            ["st_unigram"],
            domain="ai.onnx.ml",
            keys_strings=unigrams,
            values_int64s=list(range(len(unigrams))),
            default_int64=-1,  # outside the vocabulary, and the tokenizer's padding
        ),
    ]
    found = ["st_unigram"]
    if vectorizer["max_gram_length"] == 2:
        index = {word: i for i, word in enumerate(unigrams)}
        bigram_pool = pool[starts[1] :]
        pairs = [
            index[bigram_pool[2 * k]] * len(unigrams) + index[bigram_pool[2 * k + 1]]
            for k in range(len(bigram_pool) // 2)
        ]
        nodes += [
            _const("st_0", np.array([0], np.int64)),
            _const("st_1", np.array([1], np.int64)),
            _const("st_last", np.array([-1], np.int64)),
            _const("st_end", np.array([np.iinfo(np.int64).max], np.int64)),
            helper.make_node("Slice", ["st_unigram", "st_0", "st_last", "st_1"], ["st_left"]),
            helper.make_node("Slice", ["st_unigram", "st_1", "st_end", "st_1"], ["st_right"]),
            _const("st_unigrams", np.array(len(unigrams), np.int64)),
            helper.make_node("Mul", ["st_left", "st_unigrams"], ["st_left_scaled"]),
            helper.make_node("Add", ["st_left_scaled", "st_right"], ["st_pair_key"]),
            _const("st_zero", np.array(0, np.int64)),
            helper.make_node("Less", ["st_left", "st_zero"], ["st_left_unknown"]),
            helper.make_node("Less", ["st_right", "st_zero"], ["st_right_unknown"]),
            helper.make_node("Or", ["st_left_unknown", "st_right_unknown"], ["st_unknown"]),
            _const("st_minus", np.array(-1, np.int64)),
            helper.make_node("Where", ["st_unknown", "st_minus", "st_pair_key"], ["st_pair"]),
            helper.make_node(
                "LabelEncoder",
                ["st_pair"],
                ["st_bigram"],
                domain="ai.onnx.ml",
                keys_int64s=pairs,
                values_int64s=list(range(len(unigrams), terms)),
                default_int64=-1,
            ),
        ]
        found.append("st_bigram")
    nodes += [
        helper.make_node("Concat", found, ["st_terms"], axis=1),
        # one key per (row, term), row * terms + term, for the terms found (most of [N, T]
        # is padding up to the batch's longest text)
        helper.make_node("Shape", ["st_terms"], ["st_shape"]),
        _const("st_dim0", np.array([0], np.int64)),
        helper.make_node("Gather", ["st_shape", "st_dim0"], ["st_n"]),
        helper.make_node("Squeeze", ["st_n"], ["st_n_s"]),
        _const("st_zero_s", np.array(0, np.int64)),
        _const("st_one_s", np.array(1, np.int64)),
        helper.make_node("Range", ["st_zero_s", "st_n_s", "st_one_s"], ["st_rows"]),
        _const("st_col_axis", np.array([1], np.int64)),
        helper.make_node("Unsqueeze", ["st_rows", "st_col_axis"], ["st_rows_col"]),
        _const("st_stride", np.array(terms, np.int64)),
        helper.make_node("Mul", ["st_rows_col", "st_stride"], ["st_row_base"]),
        helper.make_node("Add", ["st_row_base", "st_terms"], ["st_keys2d"]),
        _const("st_flat", np.array([-1], np.int64)),
        helper.make_node("Reshape", ["st_keys2d", "st_flat"], ["st_all_keys"]),
        helper.make_node("Reshape", ["st_terms", "st_flat"], ["st_all_terms"]),
        _const("st_zero_t", np.array(0, np.int64)),
        helper.make_node("GreaterOrEqual", ["st_all_terms", "st_zero_t"], ["st_known"]),
        helper.make_node("Compress", ["st_all_keys", "st_known"], ["st_keys"], axis=0),
        # counts per key: sorted (TopK of all), then the length of each run of equal keys
        helper.make_node("Shape", ["st_keys"], ["st_m"]),
        helper.make_node(
            "TopK", ["st_keys", "st_m"], ["st_sorted", "st_order"], axis=0, largest=0, sorted=1
        ),
        _const("st_s0", np.array([0], np.int64)),
        _const("st_s1", np.array([1], np.int64)),
        _const("st_e_last", np.array([-1], np.int64)),
        _const("st_e_all", np.array([np.iinfo(np.int64).max], np.int64)),
        helper.make_node("Slice", ["st_sorted", "st_s1", "st_e_all", "st_s0"], ["st_next"]),
        helper.make_node("Slice", ["st_sorted", "st_s0", "st_e_last", "st_s0"], ["st_prev"]),
        helper.make_node("Equal", ["st_next", "st_prev"], ["st_same"]),
        helper.make_node("Not", ["st_same"], ["st_change"]),
        _const("st_first", np.array([True])),
        helper.make_node("Concat", ["st_first", "st_change"], ["st_run_start"], axis=0),
        helper.make_node("Squeeze", ["st_m"], ["st_m_s"]),
        helper.make_node("Range", ["st_zero_s", "st_m_s", "st_one_s"], ["st_positions"]),
        helper.make_node("Compress", ["st_positions", "st_run_start"], ["st_starts"], axis=0),
        helper.make_node("Slice", ["st_starts", "st_s1", "st_e_all", "st_s0"], ["st_later"]),
        helper.make_node("Concat", ["st_later", "st_m"], ["st_ends"], axis=0),
        helper.make_node("Sub", ["st_ends", "st_starts"], ["st_counts"]),
        helper.make_node("Gather", ["st_sorted", "st_starts"], ["st_ukeys"]),
        helper.make_node("Div", ["st_ukeys", "st_stride"], ["st_urow"]),
        helper.make_node("Mod", ["st_ukeys", "st_stride"], ["st_uterm"]),
        _const("st_term_idf", term_idf),
        _const("st_term_weight", term_weight),
        helper.make_node("Gather", ["st_term_idf", "st_uterm"], ["st_uidf"]),
        helper.make_node("Gather", ["st_term_weight", "st_uterm"], ["st_uw"]),
        helper.make_node("Cast", ["st_counts"], ["st_fcounts"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["st_fcounts", "st_uidf"], ["st_tfidf"]),
        helper.make_node("Mul", ["st_fcounts", "st_uw"], ["st_score_terms"]),
        helper.make_node("Mul", ["st_tfidf", "st_tfidf"], ["st_square_terms"]),
        helper.make_node("Cast", ["st_rows"], ["st_rows_f"], to=TensorProto.FLOAT),
        _const("st_zero_f", np.array(0, np.float32)),
        helper.make_node("Mul", ["st_rows_f", "st_zero_f"], ["st_zeros"]),
        helper.make_node(
            "ScatterElements",
            ["st_zeros", "st_urow", "st_score_terms"],
            ["st_dot"],
            axis=0,
            reduction="add",
        ),
        helper.make_node(
            "ScatterElements",
            ["st_zeros", "st_urow", "st_square_terms"],
            ["st_square"],
            axis=0,
            reduction="add",
        ),
        helper.make_node("Sqrt", ["st_square"], ["st_norm"]),
        helper.make_node("Equal", ["st_norm", "st_zero_f"], ["st_empty"]),
        _const("st_one_f", np.array(1, np.float32)),
        helper.make_node("Where", ["st_empty", "st_one_f", "st_norm"], ["st_divisor"]),
        helper.make_node("Div", ["st_dot", "st_divisor"], ["st_margin0"]),
        _const("st_bias", np.array(bias, np.float32)),
        helper.make_node("Add", ["st_margin0", "st_bias"], ["st_margin"]),
        helper.make_node("Sigmoid", ["st_margin"], ["st_p1"]),
        helper.make_node("Sub", ["st_one_f", "st_p1"], ["st_p0"]),
        helper.make_node("Unsqueeze", ["st_p0", "st_col_axis"], ["st_p0c"]),
        helper.make_node("Unsqueeze", ["st_p1", "st_col_axis"], ["st_p1c"]),
        helper.make_node("Concat", ["st_p0c", "st_p1c"], [linear_node.output[1]], axis=1),
        _const("st_half", np.array(0.5, np.float32)),
        # LinearClassifier's label: the larger score, the first class on a tie
        helper.make_node("Greater", ["st_p1", "st_half"], ["st_positive"]),
        helper.make_node("Cast", ["st_positive"], [linear_node.output[0]], to=TensorProto.INT64),
    ]
    before = [graph.node[i] for i in range(position)]
    after = [graph.node[i] for i in range(position + 4, len(graph.node))]
    rebuilt = [onnx.NodeProto() for _ in range(len(before) + len(nodes) + len(after))]
    for target, source in zip(rebuilt, before + nodes + after, strict=True):
        target.CopyFrom(source)
    del graph.node[:]
    graph.node.extend(rebuilt)
    still_used = {i for n in graph.node for i in n.input}
    for initializer in list(graph.initializer):
        if initializer.name not in still_used:
            graph.initializer.remove(initializer)
    opsets = {o.domain: o.version for o in model.opset_import}
    opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", 1), 2)  # LabelEncoder over int64 keys
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
    onnx.checker.check_model(model)
    return model
