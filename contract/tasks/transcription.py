"""Transcription: the words spoken in a recording (speech_to_text). A record is one audio
field; the target is the true transcript, which only judges the model (it is used as
trained upstream). Scores are word error rates pooled over the recordings (the errors of all
over the words of all) after Whisper's English normalisation of both sides (transformers'
EnglishTextNormalizer: numbers as digits, "mister" for "Mr.", no punctuation), then adjacent
digit tokens joined ("5 5" is "55", as "five five" normalises): `wer` (the floor), `cer`
(characters), the substitutions, deletions and insertions and the reference's `words`.
"""

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
from pydantic import Field, StrictStr

from contract.tasks.common import (
    SCORE,
    Plot,
    Served,
    no_class_names,
    no_labels,
    no_margin,
    no_payload_change,
)
from contract.tasks.outcomes import no_targets as targets
from contract.tasks.outcomes import no_view as evidently_view

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from contract.catalog import ModelSpec

__all__ = ["evidently_view", "targets"]
SUPERVISED, STRATIFIED, LABELS_SERVED = False, False, False  # transcripts only judge it
LEARNS_FROM_OUTCOMES = False  # a served recording is logged as its summary, not its samples
NATIVE = "transcripts"  # object [N]: the text of each recording
RELATIVE_PARITY = False  # transcripts are compared exactly
REFERENCE_SPLIT = "test"  # the real recordings stand for the traffic (train: synthetic speech)
BULK = False  # a client sends a recording at a time
SCORE_VALUES = False  # the served score is the confidence, in [0, 1]
DISCRETE_TARGET = False
IMPORTANCE_SCORING = ""
JUDGED_OUTPUTS = ("text",)
PIPELINE_OUTPUTS: tuple[str, ...] = ()
WORDS = "prediction.words"  # the drift view's words heard, and their rate
WORDS_PER_SECOND = "prediction.words_per_second"
OUTPUT_VIEW = (WORDS, WORDS_PER_SECOND)
MAX_TRANSCRIPT = 10_000  # characters of a transcript sent back (30 s of speech is ~100 words)
SHOWN_CHARS = 32  # of a reference, naming its recording in the plots

class_names = no_class_names
labels = no_labels
decisive = no_margin
payload = no_payload_change


def validate(spec: "ModelSpec") -> None:
    if [f.type for f in spec.fields.values()] != ["audio"]:
        raise ValueError("a transcription task reads exactly one field, of type audio")


def target_column(spec: "ModelSpec") -> Any:
    import pandera.pandas as pa

    def spoken(value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip())

    return pa.Column(
        checks=[pa.Check(spoken, element_wise=True, error="is not a non-empty transcript")],
        nullable=False,
    )


def encode_target(y: pd.Series, spec: "ModelSpec") -> np.ndarray:
    return np.asarray(y.to_numpy(dtype=object))


@cache
def normaliser() -> "Callable[[str], str]":
    """Whisper's English text normaliser, adjacent digit tokens joined (transformers is the
    scoring's alone: the service never imports it)."""
    try:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer
    except ImportError as exc:
        raise RuntimeError(
            "scoring transcripts needs transformers (Whisper's English normaliser): uv sync"
        ) from exc
    # {}: no British-to-American spelling map (a model repository's file, not transformers')
    english = EnglishTextNormalizer({})  # type: ignore[no-untyped-call]

    def normalise(text: str) -> str:
        return re.sub(r"(?<=\d) (?=\d)", "", english(str(text)))

    return normalise


def errors(references: "Sequence[str]", hypotheses: "Sequence[str]") -> dict[str, int]:
    """Word substitutions, deletions, insertions and the references' words, normalised."""
    import jiwer

    normalise = normaliser()
    output = jiwer.process_words(
        [normalise(r) for r in references], [normalise(h) for h in hypotheses]
    )
    words = output.hits + output.substitutions + output.deletions
    counts = (output.substitutions, output.deletions, output.insertions, words)
    return dict(zip(("substitutions", "deletions", "insertions", "words"), counts, strict=True))


def score(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None = None,
    views: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Pooled word and character error rates of the transcripts against the references."""
    import jiwer

    references, hypotheses = [str(v) for v in y], [str(v) for v in predicted]
    if not references:
        return {}
    found = errors(references, hypotheses)
    wrong = found["substitutions"] + found["deletions"] + found["insertions"]
    normalise = normaliser()
    cer = jiwer.cer([normalise(r) for r in references], [normalise(h) for h in hypotheses])
    result = {"wer": wrong / max(found["words"], 1), "cer": float(cer)}
    return {k: round(float(v), 6) for k, v in result.items()} | {
        k: float(v) for k, v in found.items()
    }


def record_wer(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each recording's own word error rate."""
    rates = []
    for reference, hypothesis in zip(y, predicted, strict=True):
        found = errors([str(reference)], [str(hypothesis)])
        wrong = found["substitutions"] + found["deletions"] + found["insertions"]
        rates.append(wrong / max(found["words"], 1))
    return np.asarray(rates, np.float64)


def plots(
    spec: "ModelSpec",
    y: np.ndarray,
    predicted: np.ndarray,
    threshold: float | None,
    views: dict[str, Any],
) -> dict[str, Plot]:
    names = [str(r)[:SHOWN_CHARS] for r in y]
    rates = record_wer(y, predicted)
    sets = {"test": (views["confidence"], rates)}
    if "synthetic" in views:  # the flavor's report: the train split's synthetic speech
        synthetic = views["synthetic"]
        sets["synthetic"] = (
            synthetic["confidence"],
            record_wer(synthetic["references"], synthetic["texts"]),
        )
    return {
        "wer_by_recording.png": ("wer_by_recording", (names, rates)),
        "confidence.png": ("confidence_against_wer", (sets,)),
    }


def format(result: dict[str, np.ndarray], served: Served) -> list[dict[str, Any]]:
    """The transcript, its confidence and the recording's length in seconds (to the ms)."""
    return [
        {"text": text, "confidence": confidence, "seconds": round(seconds, 3)}
        for text, confidence, seconds in zip(
            result["text"].reshape(-1).tolist(),
            result["confidence"].reshape(-1).tolist(),
            result["seconds"].reshape(-1).tolist(),
            strict=True,
        )
    ]


def answered(spec: "ModelSpec", prediction: dict[str, Any]) -> dict[str, Any]:
    """The confidence, the words heard and their rate: a quieter or noisier population
    lowers the first, a silent one the second, another language or speed the third."""
    text, seconds = prediction.get("text"), prediction.get("seconds")
    words = len(text.split()) if isinstance(text, str) else None
    rate = words / seconds if words is not None and seconds else None
    return {SCORE: prediction.get("confidence"), WORDS: words, WORDS_PER_SECOND: rate}


def card(spec: "ModelSpec") -> dict[str, str]:
    return {
        "target": "; never trained on: it judges the transcripts (word error rate)",
        "artifact": (
            "The artifact is Whisper's log-mel front end as an ONNX graph (the decoding "
            "settings in its\nmetadata), with the CTranslate2 model files registered beside "
            "it, each with a checksum tag;\nfaster-whisper decodes the graph's features. "
            "The transcripts are checked against the native\nmodel's on every test recording "
            "at export, the features against its front end."
        ),
    }


def native(outputs: dict[str, np.ndarray], frame: pd.DataFrame, spec: "ModelSpec") -> np.ndarray:
    """The transcripts, object [N]."""
    texts = np.asarray(outputs["text"], dtype=object).reshape(-1)
    found = np.empty(len(texts), object)
    found[:] = [str(t) for t in texts]
    return found


def serve(session: Any, directory: Path) -> Any:
    """Recordings in: the front end's graph, then faster-whisper's decoder on the CTranslate2
    files registered beside it (contract/speech.py)."""
    from contract.speech import TranscriptionSession  # faster-whisper: the speech model's alone

    try:
        return TranscriptionSession(session, directory)
    except (OSError, RuntimeError, ValueError) as exc:  # CTranslate2 raises RuntimeError
        raise ValueError(f"cannot open its speech model ({exc})") from exc


def outcome(spec: "ModelSpec") -> Any:
    """The true transcript: a non-empty text."""
    return Annotated[StrictStr, Field(min_length=1, max_length=MAX_TRANSCRIPT, pattern=r"\S")]


def performance(
    spec: "ModelSpec", predictions: list[dict[str, Any]], outcomes: list[Any]
) -> dict[str, float]:
    """The served transcripts' pooled error rates against the true ones."""
    texts = np.asarray([str(p.get("text") or "") for p in predictions], dtype=object)
    return score(spec, np.asarray([str(o) for o in outcomes], dtype=object), texts)


def true_outcomes(frame: pd.DataFrame, spec: "ModelSpec") -> list[Any]:
    """Held-out recordings' transcripts as /feedback takes them."""
    return [str(v) for v in frame[spec.target.column]]
