"""A Triton model repository for an exported graph, from the model's `triton:` catalog entry.

    <out>/<key>/config.pbtxt          ONNX Runtime on CPU, dynamic batching
    <out>/<key>/configs/gpu.pbtxt     the same on GPU through TensorRT FP16
                                      (tritonserver --model-config-name=gpu)
    <out>/<key>/1/model.onnx          the exported graph, byte for byte
    <out>/<key>_image/                a vision model's BLS model (python backend): encoded
                                      pictures in, answers out, decoding and resizing
                                      before the graph and the answer after it server-side
                                      (services/triton/bls/<task>/: model.py, config)

The configs are built as `ModelConfig` protobuf messages, so they are valid by construction,
and the tensors are read off the graph itself: nothing here restates the model's interface.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import jinja2
import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from contract import paths
from contract.catalog import ModelSpec, TritonSpec

VERSION = "1"
BLS_TEMPLATES = paths.ROOT / "services" / "triton" / "bls"  # <task>/model.py, config.pbtxt.j2
BLS_SUFFIX = "_image"  # the BLS model's name: <key>_image
MAX_SIDE = 4096  # the largest picture a resizing BLS model decodes (pixels a side)
GPU_CONFIG = "gpu"
TENSORRT_WORKSPACE_BYTES = 1 << 30
# ONNX element types whose Triton name is not simply TYPE_<ONNX name>
_RENAMED = {"FLOAT": "FP32", "DOUBLE": "FP64", "FLOAT16": "FP16", "BFLOAT16": "BF16"}


def repository_dir(key: str, root: Path = paths.ROOT) -> Path:
    """The export stage's Triton repository for one model: artifacts/<key>/triton."""
    return paths.onnx_model(key, root).parent / "triton"


def triton_dtype(elem_type: int) -> int:
    """Triton's DataType for an ONNX tensor element type."""
    name = onnx.TensorProto.DataType.Name(elem_type)
    try:
        value: int = mc.DataType.Value(f"TYPE_{_RENAMED.get(name, name)}")
    except ValueError:
        raise ValueError(f"ONNX element type {name} has no Triton data type") from None
    return value


def tensor_dims(value: onnx.ValueInfoProto) -> list[int]:
    """A tensor's dims as Triton wants them: -1 for variable, the batch dim left out."""
    shape = value.type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]
    if not dims or dims[0] != -1:
        raise ValueError(f"tensor {value.name!r} has no variable batch (first) dimension")
    return dims[1:]


def _tensors(values: Any, cls: Any) -> list[Any]:
    tensors = []
    for v in values:
        tensor = cls(name=v.name, data_type=triton_dtype(v.type.tensor_type.elem_type))
        dims = tensor_dims(v)
        # Triton wants non-empty dims: a per-sample scalar ([N] in the graph) is [N, 1] on the
        # API, reshaped to what the model takes or produces
        tensor.dims.extend(dims or [1])
        if not dims:
            tensor.reshape.SetInParent()
        tensors.append(tensor)
    return tensors


def cpu_config(graph: onnx.ModelProto, name: str, triton: TritonSpec) -> Any:
    """ONNX Runtime on CPU with the dynamic batcher."""
    initializers = {init.name for init in graph.graph.initializer}
    inputs = [v for v in graph.graph.input if v.name not in initializers]
    config = mc.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=triton.max_batch_size,
        input=_tensors(inputs, mc.ModelInput),
        output=_tensors(graph.graph.output, mc.ModelOutput),
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=triton.preferred_batch_sizes,
            max_queue_delay_microseconds=triton.max_queue_delay_us,
        ),
        instance_group=[
            mc.ModelInstanceGroup(count=triton.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        ],
    )
    return config


def gpu_config(cpu: Any) -> Any:
    """The CPU config on the GPU, with ONNX Runtime handing the graph to TensorRT in FP16."""
    config = mc.ModelConfig()
    config.CopyFrom(cpu)
    (group,) = config.instance_group
    group.kind = mc.ModelInstanceGroup.KIND_GPU
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
    tensorrt.name = "tensorrt"
    tensorrt.parameters["precision_mode"] = "FP16"
    tensorrt.parameters["max_workspace_size_bytes"] = str(TENSORRT_WORKSPACE_BYTES)
    return config


def to_text(config: Any) -> str:
    text: str = text_format.MessageToString(config)
    return text


def write_repository(spec: ModelSpec, onnx_file: Path, out: Path) -> Path:
    """Write <out>/<key>/ (configs and version 1) afresh; returns the model's folder."""
    if spec.triton is None:
        raise ValueError(f"{spec.key} has no triton: entry in the catalog")
    graph = onnx.load_model(onnx_file)
    cpu = cpu_config(graph, spec.key, spec.triton)
    model = out / spec.key
    shutil.rmtree(model, ignore_errors=True)
    (model / VERSION).mkdir(parents=True)
    (model / "configs").mkdir()
    shutil.copyfile(onnx_file, model / VERSION / "model.onnx")
    (model / "config.pbtxt").write_text(to_text(cpu))
    (model / "configs" / f"{GPU_CONFIG}.pbtxt").write_text(to_text(gpu_config(cpu)))
    template = BLS_TEMPLATES / spec.task
    bls = out / (spec.key + BLS_SUFFIX)
    shutil.rmtree(bls, ignore_errors=True)
    if template.is_dir():  # a task whose clients send pictures
        (bls / VERSION).mkdir(parents=True)
        shutil.copyfile(template / "model.py", bls / VERSION / "model.py")
        (bls / "config.pbtxt").write_text(bls_config(spec, graph, template))
    return model


def bls_config(spec: ModelSpec, graph: onnx.ModelProto, template: Path) -> str:
    """The BLS model's config.pbtxt from its task's template, checked as a ModelConfig."""
    assert spec.triton is not None
    (field,) = spec.fields.values()
    height, width = field.shape or (0, 0)
    outputs = {v.name: v for v in graph.graph.output}
    meta = {p.key: p.value for p in graph.metadata_props}
    values = {
        "name": spec.key + BLS_SUFFIX,
        "model": spec.key,
        "max_batch_size": spec.triton.max_batch_size,
        "max_queue_delay_us": spec.triton.max_queue_delay_us,
        "instances": spec.triton.instances,
        "classes": json.dumps(json.dumps(spec.class_names)),  # a quoted JSON string
        "classes_count": len(spec.class_names),
        "height": height,
        "width": width,
        "max_height": height,
        "max_width": width,
        "max_side": MAX_SIDE,
        "threshold": float(meta.get("threshold", 0.0)),
        "rows": tensor_dims(outputs["boxes"])[0] if "boxes" in outputs else 0,
    }
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    text = environment.from_string((template / "config.pbtxt.j2").read_text()).render(values)
    text_format.Parse(text, mc.ModelConfig())  # a valid ModelConfig, or this raises
    return text
