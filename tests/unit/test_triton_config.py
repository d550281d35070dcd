"""The Triton model repository: layout, and configs derived from the graph, valid as protobuf."""

import json
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as mc

from contract.catalog import ModelSpec, TritonSpec
from pipelines.triton import repository_dir, triton_dtype, write_repository
from tests.conftest import CATALOG

TRITON = TritonSpec(max_batch_size=8, preferred_batch_sizes=[4, 8], max_queue_delay_us=500)


def image_graph(batch: str | int = "batch") -> onnx.ModelProto:
    """uint8 [N, 28, 28] in; int64 label [N] and float probabilities [N, 10] out."""
    pixels = helper.make_tensor_value_info("image", TensorProto.UINT8, [batch, 28, 28])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [batch])
    probabilities = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, 10])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [784, 10], [0.001] * 7840)
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 784])
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(nodes, "g", [pixels], [label, probabilities], [weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def spec(triton: TritonSpec | None = TRITON) -> ModelSpec:
    return CATALOG["fashion_cnn"].model_copy(update={"triton": triton})


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    onnx.save_model(image_graph(), tmp_path / "model.onnx")
    write_repository(spec(), tmp_path / "model.onnx", tmp_path / "repo")
    return tmp_path / "repo"


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_layout_is_a_triton_repository(repository: Path, tmp_path: Path) -> None:
    files = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file())
    assert files == [
        "fashion_cnn/1/model.onnx",
        "fashion_cnn/config.pbtxt",
        "fashion_cnn/configs/gpu.pbtxt",
    ]
    assert (repository / "fashion_cnn/1/model.onnx").read_bytes() == (
        tmp_path / "model.onnx"
    ).read_bytes()


def test_cpu_config_comes_from_the_graph_and_the_catalog(repository: Path) -> None:
    config = parse(repository / "fashion_cnn/config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == (
        "fashion_cnn",
        "onnxruntime_onnx",
        8,
    )
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("image", mc.TYPE_UINT8, [28, 28])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("label", mc.TYPE_INT64, [1]),  # Triton needs non-empty dims ...
        ("probabilities", mc.TYPE_FP32, [10]),
    ]
    label, probabilities = config.output
    assert label.HasField("reshape") and not label.reshape.shape  # ... the graph gives [N]
    assert not probabilities.HasField("reshape")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = config.instance_group
    assert (group.kind, group.count) == (mc.ModelInstanceGroup.KIND_CPU, 1)
    assert not config.HasField("optimization")


def test_gpu_config_uses_tensorrt_fp16(repository: Path) -> None:
    cpu, gpu = (
        parse(repository / "fashion_cnn" / f) for f in ("config.pbtxt", "configs/gpu.pbtxt")
    )
    (group,) = gpu.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_GPU
    (accelerator,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert int(accelerator.parameters["max_workspace_size_bytes"]) > 0
    # the rest is the CPU config: same tensors, same batching
    gpu.ClearField("optimization")
    gpu.ClearField("instance_group")
    cpu.ClearField("instance_group")
    assert gpu == cpu


def test_rewriting_replaces_the_previous_repository(repository: Path, tmp_path: Path) -> None:
    (repository / "fashion_cnn/2").mkdir()
    write_repository(spec(), tmp_path / "model.onnx", repository)
    assert not (repository / "fashion_cnn/2").exists()


def test_graph_without_a_batch_dimension_is_refused(tmp_path: Path) -> None:
    onnx.save_model(image_graph(batch=1), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="batch"):
        write_repository(spec(), tmp_path / "model.onnx", tmp_path / "repo")


def test_model_without_a_triton_entry_is_refused(tmp_path: Path) -> None:
    onnx.save_model(image_graph(), tmp_path / "model.onnx")
    with pytest.raises(ValueError, match="triton"):
        write_repository(spec(None), tmp_path / "model.onnx", tmp_path / "repo")


@pytest.mark.parametrize(
    ("onnx_type", "triton_type"),
    [
        (TensorProto.FLOAT, mc.TYPE_FP32),
        (TensorProto.DOUBLE, mc.TYPE_FP64),
        (TensorProto.FLOAT16, mc.TYPE_FP16),
        (TensorProto.INT64, mc.TYPE_INT64),
        (TensorProto.STRING, mc.TYPE_STRING),
        (TensorProto.BOOL, mc.TYPE_BOOL),
    ],
)
def test_onnx_types_map_to_triton_types(onnx_type: int, triton_type: int) -> None:
    assert triton_dtype(onnx_type) == triton_type


def test_type_without_a_triton_counterpart_is_refused() -> None:
    with pytest.raises(ValueError, match="COMPLEX64"):
        triton_dtype(TensorProto.COMPLEX64)


def test_preferred_batch_sizes_must_fit_the_maximum() -> None:
    with pytest.raises(ValidationError, match="preferred_batch_sizes"):
        TritonSpec(max_batch_size=8, preferred_batch_sizes=[16])


def test_the_cnn_gets_a_repository_beside_its_onnx_file() -> None:
    assert CATALOG["fashion_cnn"].triton is not None
    assert repository_dir("fashion_cnn", Path("/r")) == Path("/r/artifacts/fashion_cnn/triton")


def boxes_graph() -> onnx.ModelProto:
    """A detector's interface: pictures and sizes in; count, boxes, scores, labels out."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", "h", "w", 3])
    size = helper.make_tensor_value_info("image_size", TensorProto.INT64, ["n", 2])
    outputs = [
        helper.make_tensor_value_info("count", TensorProto.INT64, ["n"]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["n", 300, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 300]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["n", 300]),
    ]
    zeros = helper.make_tensor("z", TensorProto.FLOAT, [1, 300, 4], [0.0] * 1200)
    nodes = [
        helper.make_node("Shape", ["image_size"], ["s"], start=0, end=1),
        helper.make_node("Squeeze", ["s"], ["count"]),
        helper.make_node("Identity", ["z"], ["boxes"]),
        helper.make_node("ReduceSum", ["z"], ["scores"], axes=[2], keepdims=0),
        helper.make_node("Cast", ["scores"], ["labels"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(nodes, "g", [image, size], outputs, [zeros])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    helper.set_model_props(model, {"threshold": "0.3"})
    return model


@pytest.mark.parametrize("key", ["tree_detection", "fashion_segmentation"])
def test_vision_models_get_a_bls_model_for_encoded_pictures(key: str, tmp_path: Path) -> None:
    """<key>_image: the task's model.py and a config naming the graph it calls, the field's
    size, the classes and (a detector) the served threshold; valid as a ModelConfig."""
    graph = boxes_graph() if key == "tree_detection" else image_graph()
    onnx.save_model(graph, tmp_path / "model.onnx")
    entry = CATALOG[key].model_copy(update={"triton": TRITON})
    write_repository(entry, tmp_path / "model.onnx", tmp_path / "repo")
    folder = tmp_path / "repo" / f"{key}_image"
    task = CATALOG[key].task
    template = Path("services/triton/bls") / task / "model.py"
    assert (folder / "1" / "model.py").read_bytes() == template.read_bytes()
    config = parse(folder / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["IMAGE"]
    assert config.input[0].data_type == mc.TYPE_STRING
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert parameters["model"] == key
    assert parameters["classes"] == json.dumps(CATALOG[key].class_names)
    if task == "detection":
        assert parameters["threshold"] == "0.3" and parameters["max_width"] == "1000"
        assert [list(o.dims) for o in config.output][:2] == [[1], [300, 4]]
    else:
        assert parameters["height"] == parameters["width"] == "64"


def test_other_models_get_no_bls_model(repository: Path) -> None:
    assert sorted(p.name for p in repository.iterdir()) == ["fashion_cnn"]
