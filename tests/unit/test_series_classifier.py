"""The series classifier through the torch flavor: the six series fields in, the same weights
from the same seed, and a graph that answers as the network does. Synthetic windows with
activity_recognition's fields and a small net: no DVC data needed."""

import hashlib

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from contract.catalog import ModelSpec, load_catalog
from contract.feeds import onnx_feeds
from pipelines.estimators.series_classifier import _augment
from pipelines.models import get_project

KEY = "activity_recognition"
SMALL = {"channels": [4, 8, 8], "epochs": 4, "batch_size": 8, "validation_size": 8}


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    spec = load_catalog()[KEY]
    return spec.model_copy(update={"params": spec.params | SMALL})


@pytest.fixture(scope="module")
def frame(spec: ModelSpec) -> pd.DataFrame:
    """Each class a sine of its own frequency on one axis, over noise of another scale."""
    rng = np.random.default_rng(0)
    classes, length, rows = spec.class_names, 100, 48
    labels = np.arange(rows) % len(classes)
    steps = np.arange(length)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in spec.fields}
    for label in labels:
        for i, name in enumerate(spec.fields):
            wave = np.sin(steps * (label + 1) / 8) * (3 if i == 0 else 0)
            columns[name].append(wave + rng.normal(0, 1 + i, length) + 10 * i)
    frame = pd.DataFrame(columns)
    return frame.assign(activity=[classes[i] for i in labels])


def _fit(spec: ModelSpec, frame: pd.DataFrame, tmp: object) -> torch.nn.Module:
    project = get_project(KEY)
    return project.FLAVOR.fit(project.build(spec), frame, spec, tmp)  # type: ignore[arg-type]


def _digest(model: torch.nn.Module) -> str:
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return weights.hexdigest()


def test_the_fields_are_channels_standardised_with_the_training_statistics(
    spec: ModelSpec, frame: pd.DataFrame, tmp_path: object
) -> None:
    model = _fit(spec, frame, tmp_path)
    mean = model.mean.numpy()  # type: ignore[operator]
    # the third field's offset is 20 and its noise 3: each channel keeps its own level
    assert mean[2] == pytest.approx(20, abs=1) and mean[0] == pytest.approx(0, abs=1)
    assert model.std.numpy()[2] == pytest.approx(3, rel=0.2)  # type: ignore[operator]


def test_same_seed_same_weights_and_the_graph_answers_as_the_network(
    spec: ModelSpec, frame: pd.DataFrame, tmp_path: object
) -> None:
    project = get_project(KEY)
    first, second = _fit(spec, frame, tmp_path), _fit(spec, frame, tmp_path)
    assert _digest(first) == _digest(second)
    native = project.FLAVOR.predict(first, frame, spec)
    graph = project.FLAVOR.to_onnx(first, spec)
    assert [i.name for i in graph.graph.input] == list(spec.fields)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], onnx_feeds(frame, spec))
    np.testing.assert_allclose(probabilities, native, atol=1e-5)
    assert (label == native.argmax(axis=1)).all()


def test_augmentation_shifts_in_time_and_scales_each_channel_a_little() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10) + 1
    out = _augment(x, torch.Generator().manual_seed(0), {"max_scale": 0.1})
    ratio = out.sort(dim=2).values / x.sort(dim=2).values  # a rotation keeps the values
    assert torch.allclose(ratio, ratio[:, :, :1].expand_as(ratio), rtol=1e-5)
    assert ((ratio > 0.9 - 1e-6) & (ratio < 1.1 + 1e-6)).all()
