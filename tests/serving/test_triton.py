"""The local Triton server (services/triton/serve.py, PyTriton) on the fashion_cnn, the
semantic_search (its sentence encoder), the tree_detection and the fashion_segmentation
repositories, as one server, like the local stack's; the vision models also through their
BLS models (`<key>_image`: encoded pictures in, answers out).

A real server in its own environment, on free ports, spoken to with tritonclient over HTTP and
gRPC and checked against ONNX Runtime in this process.
"""

import base64
import io
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from contract.catalog import EMBEDDING_DIMS, INPUT_EMBEDDING, get_spec
from contract.feeds import onnx_feeds
from contract.paths import ROOT, onnx_model, split_dir
from contract.tasks import detection
from contract.tokens import encoder_inputs, graph_tokenizer
from pipelines.sources import read_idx
from pipelines.triton import repository_dir, write_repository
from tests.conftest import CATALOG

pytestmark = pytest.mark.slow

MODEL = "fashion_cnn"
SEARCH = "semantic_search"  # its encoder: token ids in, the sentence embedding out
TREES, CANVASES = "tree_detection", "fashion_segmentation"  # and their BLS models, <key>_image
READY = (MODEL, SEARCH, TREES, CANVASES, f"{TREES}_image", f"{CANVASES}_image")
PYTHON = ROOT / "services" / "triton" / ".venv" / "bin" / "python"
SERVE = ROOT / "services" / "triton" / "serve.py"
STARTUP_S = 180
STOP_S = 25  # under tritonserver's 30 s exit timeout: a hang on open connections fails
N_IMAGES = 200


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def workspace(trained: Path) -> Path:
    """The reduced-params workspace the other serving tests serve, as `dvc repro` left it."""
    return trained


@pytest.fixture(scope="module")
def repository(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export stage's Triton repository, or one written here from the exported graph."""
    exported = repository_dir(MODEL, workspace)
    if (exported / MODEL / "config.pbtxt").is_file():
        return exported
    if not onnx_model(MODEL, workspace).is_file():
        pytest.fail(f"no {onnx_model(MODEL, workspace)}: `dvc repro export@{MODEL}` makes it")
    out = tmp_path_factory.mktemp("triton")
    write_repository(CATALOG[MODEL], onnx_model(MODEL, workspace), out)
    return out


@pytest.fixture(scope="module")
def search_repository(workspace: Path) -> Path:
    exported = repository_dir(SEARCH, workspace)
    if not (exported / SEARCH / "config.pbtxt").is_file():
        pytest.fail(f"no {exported}: `dvc repro export@{SEARCH}` makes it")
    return exported


@pytest.fixture(scope="module")
def vision_repositories(workspace: Path) -> list[Path]:
    found = [repository_dir(key, workspace) for key in (TREES, CANVASES)]
    for folder, key in zip(found, (TREES, CANVASES), strict=True):
        if not (folder / f"{key}_image" / "config.pbtxt").is_file():
            pytest.fail(f"no {folder}/{key}_image: `dvc repro export@{key}` makes it")
    return found


@pytest.fixture(scope="module")
def accuracy_floor(workspace: Path) -> float:
    """The workspace's own floor, less a margin for scoring only N_IMAGES images."""
    floor = get_spec(MODEL, workspace / "params.yaml").floors["accuracy"].min
    assert floor is not None
    return floor - 0.05


class Server:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, ports: list[int]) -> None:
        self.process, self.log = process, log
        self.http_url, self.grpc_url = (f"localhost:{p}" for p in ports[:2])
        self.http_port = ports[0]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> float:
        """Seconds until the model is ready; fails with the server's log otherwise."""
        start = time.monotonic()
        with closing(httpclient.InferenceServerClient(self.http_url)) as client:
            while time.monotonic() - start < STARTUP_S:
                if self.process.poll() is not None:
                    pytest.fail(f"server exited ({self.process.returncode}):\n{self.log_tail()}")
                try:
                    if all(client.is_model_ready(m) for m in READY):
                        return time.monotonic() - start
                except (ConnectionError, InferenceServerException, OSError):
                    pass
                time.sleep(0.5)
        pytest.fail(f"server not ready after {STARTUP_S}s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def server(
    repository: Path,
    search_repository: Path,
    vision_repositories: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `make venv` (uv sync --project services/triton)")
    ports = free_ports(3)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    args = [str(PYTHON), str(SERVE), "--repository", str(repository)]
    for extra in (search_repository, *vision_repositories):
        args += ["--repository", str(extra)]
    for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports, strict=True):
        args += [flag, str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    running = Server(process, log, ports)
    try:
        running.wait_ready()
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"server still running {STOP_S}s after SIGTERM:\n{running.log_tail()}")
    assert code == 0, running.log_tail()
    with pytest.raises(OSError):  # tritonserver went with it
        socket.create_connection(("127.0.0.1", running.http_port), timeout=2).close()


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The first Fashion-MNIST test images (uint8 [N, 28, 28]) and their labels."""
    folder = Path(CATALOG[MODEL].source.path)
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:N_IMAGES]
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:N_IMAGES]
    return np.ascontiguousarray(images), labels.astype(np.int64)


@pytest.fixture(scope="module")
def reference(repository: Path, test_images: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """label and probabilities from ONNX Runtime in this process, on the served graph."""
    session = ort.InferenceSession(
        str(repository / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return [
        np.asarray(a) for a in session.run(["label", "probabilities"], {"image": test_images[0]})
    ]


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[dict[str, Any]]:
    """(client module, client) by protocol; closed first, as Triton waits for open connections."""
    made = {
        "http": (httpclient, httpclient.InferenceServerClient(server.http_url)),
        "grpc": (grpcclient, grpcclient.InferenceServerClient(server.grpc_url)),
    }
    yield made
    for _, client in made.values():
        client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_and_model_are_ready(clients: dict[str, Any], protocol: str) -> None:
    _, client = clients[protocol]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)


def test_metadata_describes_the_graph(clients: dict[str, Any]) -> None:
    http = clients["http"][1].get_model_metadata(MODEL)
    grpc = clients["grpc"][1].get_model_metadata(MODEL)
    expected = {
        "image": ("UINT8", [-1, 28, 28]),
        "label": ("INT64", [-1, 1]),  # [N] in the graph: Triton serves it as [N, 1]
        "probabilities": ("FP32", [-1, 10]),
        INPUT_EMBEDDING: ("FP32", [-1, EMBEDDING_DIMS]),  # what the service logs for drift
    }
    tensors = http["inputs"] + http["outputs"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in tensors} == expected
    tensors = [*grpc.inputs, *grpc.outputs]
    assert {t.name: (t.datatype, list(t.shape)) for t in tensors} == expected


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictions_match_onnx_runtime(
    clients: dict[str, Any],
    protocol: str,
    test_images: tuple[np.ndarray, np.ndarray],
    reference: list[np.ndarray],
    accuracy_floor: float,
) -> None:
    module, client = clients[protocol]
    images, truth = test_images
    labels, probabilities = [], []
    for start in range(0, len(images), 50):  # within max_batch_size
        batch = images[start : start + 50]
        feed = module.InferInput("image", list(batch.shape), "UINT8")
        feed.set_data_from_numpy(batch)
        result = client.infer(MODEL, [feed])
        labels.append(result.as_numpy("label"))
        probabilities.append(result.as_numpy("probabilities"))
    label, probability = np.concatenate(labels), np.concatenate(probabilities)
    assert label.shape == (len(images), 1) and label.dtype == np.int64
    assert probability.shape == (len(images), 10) and probability.dtype == np.float32
    label = label.ravel()
    np.testing.assert_array_equal(label, reference[0])
    np.testing.assert_allclose(probability, reference[1], atol=1e-5)
    assert (label == truth).mean() >= accuracy_floor


def inference_counts(client: httpclient.InferenceServerClient) -> tuple[int, int]:
    (stats,) = client.get_inference_statistics(MODEL)["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def one_image(url: str, image: np.ndarray) -> int:
    """A single-image request on a connection of its own; the predicted label."""
    with closing(httpclient.InferenceServerClient(url)) as client:
        feed = httpclient.InferInput("image", [1, *image.shape], "UINT8")
        feed.set_data_from_numpy(image[np.newaxis])
        return int(client.infer(MODEL, [feed]).as_numpy("label")[0, 0])


def test_dynamic_batching_merges_concurrent_requests(
    server: Server, test_images: tuple[np.ndarray, np.ndarray], reference: list[np.ndarray]
) -> None:
    n = 64
    with closing(httpclient.InferenceServerClient(server.http_url)) as client:
        inferences, executions = inference_counts(client)
        with ThreadPoolExecutor(n) as pool:
            labels = list(pool.map(partial(one_image, server.http_url), test_images[0][:n]))
        after_inferences, after_executions = inference_counts(client)
    assert labels == reference[0][:n].tolist()
    assert after_inferences - inferences == n
    assert after_executions - executions < n  # some requests ran together in one batch


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [([1, 27, 27], "UINT8"), ([1, 28, 28], "FP32"), ([1, 784], "UINT8")],
    ids=["wrong-shape", "wrong-dtype", "flat"],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_request_is_a_client_error(
    clients: dict[str, Any], protocol: str, shape: list[int], dtype: str
) -> None:
    module, client = clients[protocol]
    feed = module.InferInput("image", shape, dtype)
    feed.set_data_from_numpy(np.zeros(shape, np.uint8 if dtype == "UINT8" else np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, [feed])
    status = str(info.value.status())
    assert status == "400" if protocol == "http" else status == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready(MODEL)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_search_encoder_matches_onnx_runtime(
    clients: dict[str, Any], protocol: str, search_repository: Path, workspace: Path
) -> None:
    """The client tokenizes (the tokenizer is in the graph's metadata), Triton embeds."""
    graph = search_repository / SEARCH / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    texts = pd.read_parquet(split_dir(SEARCH, workspace) / "test.parquet")["query"].head(8)
    feeds = encoder_inputs(graph_tokenizer(graph), texts.tolist())
    module, client = clients[protocol]
    inputs = []
    for name, array in feeds.items():
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    embedding = client.infer(SEARCH, inputs).as_numpy("embedding")
    (expected,) = session.run(["embedding"], feeds)
    assert embedding.shape == (8, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


def test_unknown_model_is_a_client_error(clients: dict[str, Any]) -> None:
    with pytest.raises(InferenceServerException) as info:
        clients["http"][1].get_model_metadata("no_such_model")
    assert str(info.value.status()).startswith("4")


def pictures_input(module: Any, pictures: list[bytes]) -> Any:
    feed = module.InferInput("IMAGE", [len(pictures), 1], "BYTES")
    feed.set_data_from_numpy(np.array([[p] for p in pictures], dtype=object))
    return feed


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Served:
    """What a task's `format` reads of a served model: its spec and threshold."""

    def __init__(self, key: str, graph: Path) -> None:
        meta = onnx.load_model(str(graph), load_external_data=False).metadata_props
        threshold = {p.key: p.value for p in meta}.get("threshold")
        self.spec, self.segments = CATALOG[key], []
        self.threshold = None if threshold is None else float(threshold)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_detection_bls_answers_encoded_pictures_as_the_graph_does(
    clients: dict[str, Any], protocol: str, vision_repositories: list[Path], workspace: Path
) -> None:
    """Two held-out tiles as PNG bytes: the BLS model's boxes are the ONNX graph's on each
    tile alone (ONNX Runtime in this process), and its JSON is the REST service's answer."""
    graph = vision_repositories[0] / TREES / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    tiles = pd.read_parquet(split_dir(TREES, workspace) / "test.parquet").head(2)
    module, client = clients[protocol]
    result = client.infer(f"{TREES}_image", [pictures_input(module, tiles["image"].tolist())])
    names = ["count", "boxes", "scores", "labels"]
    for i in range(len(tiles)):
        expected = dict(
            zip(names, session.run(names, onnx_feeds(tiles.iloc[[i]], CATALOG[TREES])), strict=True)
        )
        count = int(expected["count"][0])
        assert int(result.as_numpy("count")[i, 0]) == count > 0
        np.testing.assert_allclose(
            result.as_numpy("boxes")[i, :count], expected["boxes"][0, :count], atol=1e-3
        )
        np.testing.assert_allclose(
            result.as_numpy("scores")[i, :count], expected["scores"][0, :count], atol=1e-5
        )
        assert set(result.as_numpy("labels")[i, :count].tolist()) == {b"tree"}
        (answer,) = detection.format(expected, Served(TREES, graph))
        assert json.loads(result.as_numpy("detections")[i, 0]) == answer


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_segmentation_bls_resizes_and_answers_masks(
    clients: dict[str, Any], protocol: str, vision_repositories: list[Path], workspace: Path
) -> None:
    """Canvases as PNG: at the model's 64x64 the masks are the graph's; a canvas sent at
    128x128 is resized for the model and its mask comes back at 128x128."""
    graph = vision_repositories[1] / CANVASES / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    canvases = pd.read_parquet(split_dir(CANVASES, workspace) / "test.parquet").head(4)
    pixels = [np.frombuffer(v, np.uint8).reshape(64, 64) for v in canvases["image"]]
    module, client = clients[protocol]
    result = client.infer(f"{CANVASES}_image", [pictures_input(module, [png(p) for p in pixels])])
    (label,) = session.run(["label"], {"image": np.stack(pixels)})
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    answers = [json.loads(a[0]) for a in result.as_numpy("masks")]
    for answer, mask in zip(answers, label, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
        np.testing.assert_array_equal(decoded, mask)
        assert sum(answer["areas"].values()) == int((mask > 0).sum())
    large = Image.fromarray(pixels[0]).resize((128, 128), Image.Resampling.BILINEAR)
    result = client.infer(f"{CANVASES}_image", [pictures_input(module, [png(np.asarray(large))])])
    answer = json.loads(result.as_numpy("masks")[0, 0])
    assert Image.open(io.BytesIO(base64.b64decode(answer["mask"]))).size == (128, 128)


@pytest.mark.parametrize(
    ("model", "picture", "message"),
    [
        (f"{TREES}_image", b"GIF89a" + bytes(30), "not a PNG or JPEG"),
        (f"{TREES}_image", png(np.zeros((1001, 8, 3), np.uint8)), "larger than 1000x1000"),
        (f"{CANVASES}_image", b"\x89PNG\r\n\x1a\n broken", "not a PNG or JPEG"),
    ],
    ids=["gif", "too-large", "broken-png"],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bad_picture_is_a_client_error(
    clients: dict[str, Any], protocol: str, model: str, picture: bytes, message: str
) -> None:
    module, client = clients[protocol]
    with pytest.raises(InferenceServerException, match=message) as info:
        client.infer(model, [pictures_input(module, [picture])])
    status = str(info.value.status())
    assert status == "400" if protocol == "http" else status == "StatusCode.INVALID_ARGUMENT"
    assert client.is_model_ready(model)


def segmentation_counts(client: httpclient.InferenceServerClient) -> tuple[int, int]:
    (stats,) = client.get_inference_statistics(CANVASES)["model_stats"]
    return int(stats["inference_count"]), int(stats["execution_count"])


def one_picture(url: str, picture: bytes) -> str:
    with closing(httpclient.InferenceServerClient(url)) as client:
        result = client.infer(f"{CANVASES}_image", [pictures_input(httpclient, [picture])])
        return str(json.loads(result.as_numpy("masks")[0, 0])["label"])


def test_segmentation_pictures_from_concurrent_clients_batch_together(
    server: Server, workspace: Path
) -> None:
    """32 clients one picture each: the BLS model's batcher hands the graph fewer runs."""
    canvases = pd.read_parquet(split_dir(CANVASES, workspace) / "test.parquet").head(32)
    pictures = [png(np.frombuffer(v, np.uint8).reshape(64, 64)) for v in canvases["image"]]
    with closing(httpclient.InferenceServerClient(server.http_url)) as client:
        inferences, executions = segmentation_counts(client)
        with ThreadPoolExecutor(len(pictures)) as pool:
            labels = list(pool.map(partial(one_picture, server.http_url), pictures))
        after_inferences, after_executions = segmentation_counts(client)
    assert len(labels) == 32 and after_inferences - inferences == 32
    assert after_executions - executions < 32
