"""Speech recordings (the `audio` field type): the one decoder that the service's validation,
the raw-data check and the drift view share, so that all three accept the same bytes.

A recording is 16 kHz mono 16-bit PCM, as WAV (read by the stdlib `wave`) or FLAC (decoded
by PyAV, `av`). Anything else is a ValueError saying what was expected and what was found:
a speech model hears 8 kHz, stereo or float audio silently resampled or downmixed as another
recording, so nothing is converted. Memory is bounded by the field's cap before the samples
are read: a WAV's header declares its length, and a FLAC (30 s of silence is a few KB) is
decoded frame by frame until it passes the cap.
"""

import io
import math
import re
import struct
import wave
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
# The longest recording an audio field may declare (catalog `shape: [max_samples]`): 30 s,
# a speech model's window; as WAV 960,044 bytes, within the service's byte cap
MAX_SAMPLES = 30 * SAMPLE_RATE
FULL_SCALE = 32768.0  # a 16-bit sample's scale: samples in [-1, 1)
SILENCE_DBFS = -120.0  # the level of digital silence (log10 of 0 has none)
AUDIO_VIEW = ("seconds", "loudness_dbfs", "peak_dbfs")  # a recording's drift summary
EXPECTED = "not a 16 kHz mono 16-bit PCM WAV or FLAC recording"
# What a client may have sent instead, by its first bytes: named in the error
OTHER_FORMATS = {
    b"ID3": "an MP3",
    b"\xff\xfb": "an MP3",
    b"\xff\xf3": "an MP3",
    b"\xff\xf2": "an MP3",
    b"OggS": "an Ogg",
    b"\x1aE\xdf\xa3": "a WebM/Matroska",
    b"RIFX": "a big-endian WAV",
    b"RF64": "an RF64 WAV",
    b"FORM": "an AIFF",
}
WAV_FORMATS = {3: "32-bit float", 6: "A-law", 7: "mu-law", 0xFFFE: "extensible-format"}


class Recording(bytes):
    """An encoded recording as sent, with its samples (float32 mono in [-1, 1): what the
    graph reads) and its drift summary (what the prediction log keeps: `recording_summary`):
    validation decodes it once."""

    samples: np.ndarray
    summary: dict[str, float]

    @classmethod
    def of(cls, encoded: bytes, samples: np.ndarray) -> "Recording":
        recording = cls(encoded)
        recording.samples = samples
        recording.summary = recording_summary(samples)
        return recording


def _dbfs(level: float) -> float:
    return max(20 * math.log10(level), SILENCE_DBFS) if level > 0 else SILENCE_DBFS


def recording_summary(samples: np.ndarray) -> dict[str, float]:
    """A recording's length in seconds, its loudness (RMS) and its peak in dBFS: what the
    drift report compares (~1 ms for 30 s). The prediction log keeps this rather than the
    recording, whose ~1.3 MB of base64 would pass the log's row cap (see photo_summary)."""
    values = np.asarray(samples, np.float64).reshape(-1)
    if not values.size:
        return dict(zip(AUDIO_VIEW, (0.0, SILENCE_DBFS, SILENCE_DBFS), strict=True))
    rms = math.sqrt(float(np.dot(values, values)) / values.size)  # no squared copy
    peak = max(float(values.max()), -float(values.min()))
    return dict(zip(AUDIO_VIEW, (values.size / SAMPLE_RATE, _dbfs(rms), _dbfs(peak)), strict=True))


def decode_recording(value: Any, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """The float32 samples of a Recording as decoded, or of WAV / FLAC bytes (`read_recording`)."""
    samples = getattr(value, "samples", None)
    if samples is not None:
        return np.asarray(samples, np.float32)
    if not isinstance(value, bytes | bytearray | memoryview):  # bytes(10**9): a gigabyte
        raise TypeError(f"a recording is bytes, not {type(value).__name__}")
    return read_recording(bytes(value), max_samples).samples


def read_recording(raw: bytes, max_samples: int = MAX_SAMPLES) -> Recording:
    """A Recording of 16 kHz mono 16-bit WAV or FLAC bytes of 1..max_samples samples;
    ValueError naming what was found otherwise."""
    if raw.startswith(b"RIFF") and raw[8:12] == b"WAVE":
        pcm = _wav(raw, max_samples)
    elif raw.startswith(b"fLaC"):
        pcm = _flac(raw, max_samples)
    else:
        raise ValueError(f"{EXPECTED}: {_format_of(raw)}")
    if not pcm.size:
        raise ValueError("recording has no samples")
    return Recording.of(raw, pcm.astype(np.float32) / FULL_SCALE)


def _channels(count: int) -> str:
    return f"{count} channel{'s' if count != 1 else ''}"


def _format_of(raw: bytes) -> str:
    if not raw:
        return "no bytes"
    named = next((name for magic, name in OTHER_FORMATS.items() if raw.startswith(magic)), "")
    if raw[4:8] == b"ftyp":
        named = "an MP4/M4A"
    return f"{named or 'unknown bytes'}, starting {raw[:12]!r}"


def _too_long(samples: int, max_samples: int) -> ValueError:
    return ValueError(
        f"recording of {samples} samples ({samples / SAMPLE_RATE:g} s) is longer than the "
        f"field's {max_samples} ({max_samples / SAMPLE_RATE:g} s)"
    )


def _wav(raw: bytes, max_samples: int) -> np.ndarray:
    """int16 samples of a WAV, its format and declared length checked from the header."""
    try:
        with wave.open(io.BytesIO(raw), "rb") as reader:
            found = (reader.getframerate(), reader.getnchannels(), 8 * reader.getsampwidth())
            if found != (SAMPLE_RATE, 1, 16):
                rate, channels, bits = found
                raise ValueError(
                    f"{EXPECTED}: a WAV of {rate} Hz, {_channels(channels)}, {bits}-bit"
                )
            declared = reader.getnframes()
            if declared > max_samples:  # before a sample is read
                raise _too_long(declared, max_samples)
            data = reader.readframes(declared)
    except (wave.Error, EOFError, struct.error) as exc:
        raise ValueError(f"{EXPECTED}: {_wav_problem(exc)}") from exc
    if len(data) != 2 * declared:
        raise ValueError(
            f"recording is truncated: its WAV header declares {declared} samples, the data "
            f"holds {len(data) // 2}"
        )
    return np.frombuffer(data, "<i2")


def _wav_problem(exc: Exception) -> str:
    """What `wave` found: another encoding (wave.Error: unknown format: 3), or a broken file."""
    tag = re.fullmatch(r"unknown format: (\d+)", str(exc))
    if tag:
        kind = WAV_FORMATS.get(int(tag[1]), "non-PCM")
        return f"a {kind} WAV (format tag {tag[1]})"
    return f"a WAV that does not parse ({type(exc).__name__}: {str(exc) or 'cut short'})"


def _streaminfo(raw: bytes) -> tuple[int, int, int, int]:
    """(sample rate, channels, bits per sample, total samples: 0 where not said) from the
    STREAMINFO block every FLAC starts with, read before anything is decoded."""
    if len(raw) < 26 or raw[4] & 0x7F != 0:  # the first metadata block's type: 0
        raise ValueError(f"{EXPECTED}: a FLAC without its STREAMINFO block")
    packed = int.from_bytes(raw[18:26], "big")  # 20 bits, 3, 5 and 36
    return packed >> 44, (packed >> 41 & 7) + 1, (packed >> 36 & 31) + 1, packed & (2**36 - 1)


def _flac(raw: bytes, max_samples: int) -> np.ndarray:
    """int16 samples of a FLAC stream decoded frame by frame, stopped past the cap."""
    import av

    rate, channels, bits, declared = _streaminfo(raw)
    if (rate, channels, bits) != (SAMPLE_RATE, 1, 16):
        raise ValueError(f"{EXPECTED}: a FLAC of {rate} Hz, {_channels(channels)}, {bits}-bit")
    if declared > max_samples:  # before a frame is decoded
        raise _too_long(declared, max_samples)
    frames: list[np.ndarray] = []
    count = 0
    try:
        with av.open(io.BytesIO(raw), mode="r", format="flac") as container:
            stream = container.streams.audio[0]
            for frame in container.decode(stream):  # as the stream says, not as converted
                _check_flac(stream.codec_context.name, frame)
                frames.append(frame.to_ndarray().reshape(-1))
                count += frame.samples
                if count > max_samples:
                    raise _too_long(count, max_samples)
    except (av.FFmpegError, IndexError, EOFError) as exc:  # IndexError: no audio stream
        raise ValueError(f"{EXPECTED}: a FLAC that does not decode ({exc})") from exc
    if declared and count != declared:
        raise ValueError(
            f"recording is truncated: its FLAC header declares {declared} samples, {count} decode"
        )
    return np.concatenate(frames) if frames else np.zeros(0, np.int16)


def _check_flac(codec: str, frame: Any) -> None:
    """A decoded frame is what STREAMINFO said (a frame may say otherwise in its header)."""
    found = (codec, frame.sample_rate, frame.layout.nb_channels, frame.format.name)
    if found != ("flac", SAMPLE_RATE, 1, "s16"):
        raise ValueError(
            f"{EXPECTED}: a {codec} frame of {found[1]} Hz, {_channels(found[2])}, "
            f"{found[3]} samples"
        )
