"""The CNN trains to the same weights bit for bit: fresh seeds, any core count of the process.

A synthetic image frame with fashion_cnn's fields and a small net: no DVC data needed. The
process's thread count stands in for the machine's cores (training once used all of them).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contract.catalog import load_catalog
from pipelines.models import get_project

ROWS, SIDE = 640, 28
SMALL = {
    "channels": [4, 8],
    "hidden": 16,
    "epochs": 2,
    "batch_size": 64,
    "validation_size": 128,
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, ROWS)
    # a class-dependent band on noise, so that the loss has something to learn
    pixels = rng.integers(0, 80, (ROWS, SIDE, SIDE), dtype=np.uint8)
    for i, label in enumerate(labels):
        pixels[i, 2 * label : 2 * label + 6] += 150
    return pd.DataFrame({"image": [p.tobytes() for p in pixels], "label": labels.astype("int64")})


def _fit(frame: pd.DataFrame, tmp: Path, process_threads: int) -> tuple[str, str, list[float]]:
    spec = load_catalog()["fashion_cnn"]
    spec = spec.model_copy(update={"params": spec.params | SMALL})
    project = get_project("fashion_cnn")
    before = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        torch.rand(17)  # the global RNG elsewhere in the process: fit seeds its own draws
        model = project.FLAVOR.fit(project.build(spec), frame, spec, tmp)
        assert torch.get_num_threads() == process_threads  # fit gives the count back
        assert not torch.are_deterministic_algorithms_enabled()
        proba = project.FLAVOR.predict(model, frame, spec)
    finally:
        torch.set_num_threads(before)
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.contiguous().numpy().tobytes())
    history = (tmp / "history.json").read_text()
    losses = [epoch["train_loss"] for epoch in json.loads(history)]
    return weights.hexdigest(), hashlib.sha256(proba.tobytes()).hexdigest() + history, losses


def test_two_fits_are_identical_whatever_the_thread_count(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    runs = [_fit(frame, tmp_path / str(i), n) for i, n in enumerate((1, 1, 2, 4))]
    weights, outputs, losses = zip(*runs, strict=True)
    assert losses[0][-1] < losses[0][0]  # it trained
    assert len(set(weights)) == 1, weights
    assert len(set(outputs)) == 1  # predictions and the per-epoch history too
