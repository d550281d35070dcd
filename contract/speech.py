"""A speech recogniser as it is served: Whisper's log-mel front end as an ONNX graph, then
CTranslate2's Whisper decoder through faster-whisper, behind an ONNX Runtime session's
interface (`TranscriptionSession`), recordings in, transcripts out.

ONNX has no beam search or tokenizer loop, and CTranslate2's model is not an ONNX graph, so
the exported graph is the front end alone (samples and their count in, the [80, frames]
log-mel features out) and carries the decoding settings in its metadata; the CTranslate2
files (MODEL_FILES) are registered beside it. faster-whisper serves with the graph as its
feature extractor (`FrontEnd`), so the features the decoder reads are the graph's. The
pipeline's checks and the service both run this session: what is checked is what is served.
It needs onnxruntime, faster-whisper and numpy, not PyTorch or transformers.
"""

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from contract.audio import SAMPLE_RATE
from contract.tokens import Arg

# CTranslate2's Whisper model as faster-whisper reads it, registered beside model.onnx
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.json")
SETTINGS = "transcription"  # the graph's metadata key of the decoding settings (JSON)
# faster-whisper's transcribe options the settings fix (the rest keep its defaults)
DECODING = ("language", "beam_size", "temperature", "condition_on_previous_text", "vad_filter")
FEATURES = "features"  # the graph's output: log-mel features [N, 80, frames]
PADDING = 160  # zeros faster-whisper appends to a recording before its STFT (in the graph)
OUTPUTS = (
    Arg("text", "tensor(string)", ["batch"]),
    Arg("confidence", "tensor(float)", ["batch"]),  # exp of the mean token log-probability
    Arg("seconds", "tensor(float)", ["batch"]),
    Arg("words", "tensor(float)", ["batch"]),
)


def whisper(directory: Path, settings: Mapping[str, Any]) -> Any:
    """faster-whisper's WhisperModel on the CTranslate2 files in `directory`, never
    downloaded: a missing file is a FileNotFoundError naming it."""
    from faster_whisper import WhisperModel

    missing = [name for name in MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks the speech model's files {missing}")
    # it logs every recording's length at INFO: the service logs its requests itself
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    return WhisperModel(
        str(directory),
        device="cpu",
        compute_type=str(settings["compute_type"]),
        cpu_threads=int(settings["threads"]),
        num_workers=1,
        local_files_only=True,
    )


def transcribe(model: Any, samples: np.ndarray, settings: Mapping[str, Any]) -> tuple[str, float]:
    """(the transcript, the mean of its segments' average token log-probability) of float32
    samples at 16 kHz: -inf where nothing was heard. Greedy or beam search at temperature 0,
    no fallback: the same samples give the same transcript."""
    segments, _ = model.transcribe(
        np.asarray(samples, np.float32), best_of=1, **{k: settings[k] for k in DECODING}
    )
    found = list(segments)
    text = " ".join(s.text.strip() for s in found).strip()
    logprob = float(np.mean([s.avg_logprob for s in found])) if found else -math.inf
    return text, logprob


class FrontEnd:
    """The graph as faster-whisper's FeatureExtractor: the same attributes (`like`'s, the
    model's own extractor) and call, the features computed by ONNX Runtime."""

    def __init__(self, session: Any, like: Any) -> None:
        self.session = session
        self.speech, self.sizes = (i.name for i in session.get_inputs())
        self.n_fft: int = like.n_fft
        self.hop_length: int = like.hop_length
        self.chunk_length: int = like.chunk_length
        self.sampling_rate: int = like.sampling_rate
        self.n_samples = self.chunk_length * self.sampling_rate
        self.nb_max_frames = self.n_samples // self.hop_length
        self.time_per_frame = self.hop_length / self.sampling_rate

    def __call__(
        self, waveform: np.ndarray, padding: int = PADDING, chunk_length: int | None = None
    ) -> np.ndarray:
        """Log-mel features [80, frames] of a recording's samples (faster-whisper's call)."""
        if padding != PADDING:  # the graph appends PADDING zeros, as transcribe asks
            raise ValueError(f"the ONNX front end pads with {PADDING} samples, not {padding}")
        if chunk_length is not None:
            self.n_samples = chunk_length * self.sampling_rate
            self.nb_max_frames = self.n_samples // self.hop_length
        samples = np.asarray(waveform, np.float32).reshape(1, -1)
        feeds = {self.speech: samples, self.sizes: np.array([[samples.shape[1]]], np.int64)}
        (features,) = self.session.run([FEATURES], feeds)
        return np.asarray(features[0])


class TranscriptionSession:
    """The front end's graph -> faster-whisper's decoder, with an ONNX Runtime session's
    interface: the audio field's samples [N, longest] and their counts [N, 1] in (the
    graph's own inputs), per record its `text`, `confidence` (exp of the segments' mean
    average log-probability, in [0, 1]), `seconds` and `words` out. Records run one at a
    time, each cut to its own count."""

    def __init__(self, session: Any, directory: Path) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        if SETTINGS not in meta:
            raise ValueError(f"not a speech front end: its metadata lacks [{SETTINGS!r}]")
        self.session = session
        self.settings: dict[str, Any] = json.loads(meta[SETTINGS])
        self.model = whisper(directory, self.settings)
        self.model.feature_extractor = FrontEnd(session, self.model.feature_extractor)
        self.speech, self.sizes = (i.name for i in session.get_inputs())

    def get_modelmeta(self) -> Any:
        return self.session.get_modelmeta()

    def get_inputs(self) -> list[Any]:
        return list(self.session.get_inputs())

    def get_outputs(self) -> list[Arg]:
        return list(OUTPUTS)

    def run(
        self, names: list[str] | None, feeds: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        """The outputs `names` (all by default) of each record of the batch."""
        names = names or [o.name for o in OUTPUTS]
        counts = np.asarray(feeds[self.sizes]).reshape(-1)
        heard = [
            transcribe(self.model, samples[: int(count)], self.settings)
            for samples, count in zip(feeds[self.speech], counts, strict=True)
        ]
        result = answers(heard, counts)
        return [result[name] for name in names]


def answers(heard: list[tuple[str, float]], counts: np.ndarray) -> dict[str, np.ndarray]:
    """The outputs (OUTPUTS) of each record from its (transcript, log-probability) and its
    sample count: the served session's and the native model's alike."""
    texts = np.empty(len(heard), object)
    texts[:] = [text for text, _ in heard]
    logprobs = np.array([logprob for _, logprob in heard], np.float64)
    return {
        "text": texts,
        "confidence": np.exp(logprobs).astype(np.float32),
        "seconds": (np.asarray(counts, np.float64).reshape(-1) / SAMPLE_RATE).astype(np.float32),
        "words": np.array([len(t.split()) for t in texts], np.float32),
    }
