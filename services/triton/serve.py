"""Triton's HTTP and gRPC protocol for a Triton model repository, locally, through PyTriton.

Every ONNX model folder in the repository (config.pbtxt + 1/model.onnx, as `pipelines.export`
writes them) is run in ONNX Runtime on CPU and bound in PyTriton under the same name, tensors
and dynamic batching, so tritonclient talks to it as to tritonserver loading the repository
(no Docker, no GPU). A python-backend folder (a vision model's BLS model, `<key>_image`:
encoded pictures in, answers out) is loaded into the bundled tritonserver as it is, and
calls its ONNX model through Triton, as in a stock tritonserver. Self-contained: runs in
services/triton/.venv, not the project's.

    services/triton/.venv/bin/python services/triton/serve.py \\
        --repository artifacts/fashion_cnn/triton --repository artifacts/semantic_search/triton \\
        --http-port 8000 --grpc-port 8001
"""

import argparse
import logging
import os
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import (
    DEFAULT_PROTECTED_ENDPOINTS,
    TRITON_ACCESS_HEADER,
    Triton,
    TritonConfig,
    TritonSecurityConfig,
)
from pytriton.utils.workspace import Workspace
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype

log = logging.getLogger("triton.serve")
VERSION = "1"
# Statistics stay open, as in a stock tritonserver: read-only, and where batching shows.
# Loading and unloading models stays behind PyTriton's access token.
RESTRICTED = [e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"]


def read_config(model_dir: Path) -> Any:
    """config.pbtxt as a ModelConfig message; the folder name must be the model's name."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    if config.name != model_dir.name:
        raise ValueError(f"{model_dir}/config.pbtxt names the model {config.name!r}")
    return config


def numpy_dtype(data_type: int) -> np.dtype[Any]:
    """numpy's dtype for a config's TYPE_*; TYPE_STRING is BYTES on the API."""
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    dtype: np.dtype[Any] = np.dtype(triton_to_np_dtype("BYTES" if name == "STRING" else name))
    return dtype


def tensors(specs: Any) -> list[Tensor]:
    return [Tensor(name=t.name, dtype=numpy_dtype(t.data_type), shape=tuple(t.dims)) for t in specs]


def pytriton_config(config: Any) -> ModelConfig:
    """The config's batching, as PyTriton takes it."""
    batcher = config.dynamic_batching
    return ModelConfig(
        batching=config.max_batch_size > 0,
        max_batch_size=config.max_batch_size,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=batcher.max_queue_delay_microseconds,
            preferred_batch_size=list(batcher.preferred_batch_size) or None,
        ),
    )


def model_shape(tensor: Any) -> tuple[int, ...]:
    """A tensor's per-sample shape in the graph: `reshape` when the API shape differs."""
    return tuple(tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)


def as_declared(result: np.ndarray, dims: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A batch of one output in its API shape and exact declared type.

    ONNX Runtime returns int64 as numpy.longlong, which numpy 1.x does not count as
    numpy.int64 (PyTriton's output check): the same bytes, viewed as the declared type.
    """
    shaped = result.reshape(len(result), *dims)
    return shaped if dtype.kind == "O" else shaped.view(dtype)


def infer_function(model_file: Path, config: Any) -> Callable[..., dict[str, np.ndarray]]:
    """One model instance: its own ONNX Runtime session behind PyTriton's @batch."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    # reshaped inputs only (a per-sample scalar): others may have several variable dims
    to_model = {t.name: model_shape(t) for t in config.input if t.HasField("reshape")}
    to_api = {t.name: (tuple(t.dims), numpy_dtype(t.data_type)) for t in config.output}
    outputs = list(to_api)

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {
            name: x.reshape(len(x), *to_model[name]) if name in to_model else x
            for name, x in inputs.items()
        }
        results = zip(outputs, session.run(outputs, feeds), strict=True)
        return {name: as_declared(r, *to_api[name]) for name, r in results}

    return infer  # type: ignore[no-any-return]


def model_dirs(repository: Path) -> list[Path]:
    return sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def is_python(model_dir: Path) -> bool:
    """A python-backend model (a BLS model), loaded as it is rather than bound."""
    return bool(read_config(model_dir).backend == "python")


def bind_repository(triton: Triton, repository: Path) -> list[str]:
    """Bind every ONNX model folder of the repository; returns their names."""
    names = []
    for model_dir in model_dirs(repository):
        if is_python(model_dir):
            names.append(model_dir.name)
            continue
        config = read_config(model_dir)
        instances = sum(g.count or 1 for g in config.instance_group) or 1
        triton.bind(
            model_name=config.name,
            infer_func=[
                infer_function(model_dir / VERSION / "model.onnx", config) for _ in range(instances)
            ],
            inputs=tensors(config.input),
            outputs=tensors(config.output),
            config=pytriton_config(config),
            strict=True,
        )
        names.append(config.name)
    if not names:
        raise SystemExit(f"no model folder with a config.pbtxt in {repository}")
    return names


def load_python_models(
    repositories: list[Path], store: Path, url: str, token: str | None
) -> list[str]:
    """Copy the python-backend folders into the server's model store and load them (after
    the ONNX models they call are bound); returns their names."""
    import tritonclient.http as httpclient

    loaded = []
    client = httpclient.InferenceServerClient(url, network_timeout=300.0)
    headers = {TRITON_ACCESS_HEADER: token} if token else None
    try:
        for repository in repositories:
            for model_dir in filter(is_python, model_dirs(repository)):
                shutil.copytree(model_dir, store / model_dir.name, dirs_exist_ok=True)
                client.load_model(model_dir.name, headers=headers)
                loaded.append(model_dir.name)
    finally:
        client.close()
    return loaded


def ensure_libpython() -> None:
    """Re-exec with this interpreter's lib folder on LD_LIBRARY_PATH.

    Triton's Python stub backend links libpython, which a pyenv (or any non-system) Python
    keeps outside the loader's default path; tritonserver and the stub inherit this setting.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, *paths]))
        os.execv(sys.executable, [sys.executable, *sys.argv])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository",
        type=Path,
        action="append",
        required=True,
        help="Triton model repository (repeat for several, as tritonserver's --model-repository)",
    )
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbosity")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ensure_libpython()
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    config = TritonConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=args.log_verbose,
    )
    security = TritonSecurityConfig(restricted_endpoints=RESTRICTED)
    workspace = Workspace(Path(tempfile.mkdtemp(prefix="triton-local-")) / "workspace")
    triton = Triton(config=config, workspace=workspace, security_config=security)
    try:
        names = [name for repo in args.repository for name in bind_repository(triton, repo)]
        triton.run()
        load_python_models(
            args.repository,
            workspace.model_store_path,
            f"127.0.0.1:{args.http_port}",
            security.access_token,
        )
        log.info(
            "ready: %s on HTTP :%d, gRPC :%d, metrics :%d",
            ", ".join(names),
            args.http_port,
            args.grpc_port,
            args.metrics_port,
        )
        while not stop.wait(timeout=1.0):
            if not triton.is_alive():
                log.error("Triton or a model's proxy backend died")
                return 1
        log.info("stopping")
        return 0
    finally:
        triton.stop()
        shutil.rmtree(workspace.path.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
