"""The audio field type: 16 kHz mono 16-bit WAV or FLAC only, decoded by one function for the
service, the raw-data check and the drift view; padded tensors with sizes; a 400 naming the
field for any other recording, before its samples are read where the header says too much."""

import base64
import contextlib
import io
import random
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import onnx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from pydantic import ValidationError

from contract import reference
from contract.audio import MAX_SAMPLES, SILENCE_DBFS, read_recording
from contract.catalog import InputField, ModelSpec, load_params
from contract.feeds import (
    SIZE_SUFFIX,
    Recording,
    decode_recording,
    each_record,
    input_names,
    logged_tensors,
    one_at_a_time,
    onnx_feeds,
    record_feeds,
    recording_summary,
    recording_tensors,
)
from pipelines import model_card
from pipelines.schema import SchemaViolation, validate_raw
from services.api import app as app_module
from services.api import predlog
from services.api.inputs import MAX_RECORDINGS, record_model, records_limit
from services.api.runtime import load
from services.api.settings import ServeSettings
from services.api.store import Artifact
from services.api.tensors import TensorError, recording_feeds
from services.tools import drift_demo
from services.tools.examples import as_records, as_tensors
from services.tools.load import payloads
from tests.conftest import CATALOG

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # pocketsphinx-testdata
SPEECH = CATALOG["house_prices"].model_copy(
    update={
        "key": "speech_test",
        "fields": {"speech": InputField(type="audio", shape=[MAX_SAMPLES])},
        "target": CATALOG["house_prices"].target.model_copy(update={"column": "seconds"}),
    }
)
RNG = np.random.default_rng(0)
NOISE = RNG.normal(0, 3000, 16_000).clip(-32768, 32767).astype(np.int16)  # 1 s at 16 kHz


def wav(pcm: np.ndarray, rate: int = 16_000, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(pcm.astype(f"<i{width}").tobytes())
    return buffer.getvalue()


def flac(pcm: np.ndarray, rate: int = 16_000, layout: str = "mono") -> bytes:
    """FLAC as PyAV writes it (16-bit: s16 samples)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout=layout)
        stream.format = "s16"
        planes = pcm.reshape(1, -1) if layout == "mono" else np.repeat(pcm, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(planes, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def float_wav(samples: np.ndarray) -> bytes:
    """IEEE float WAV (format tag 3), written by hand: `wave` cannot write one."""
    data = samples.astype("<f4").tobytes()
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 3, 1, 16_000, 64_000, 4, 32)
    body = b"WAVE" + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def declaring(encoded: bytes, total: int) -> bytes:
    """The FLAC with another total in its STREAMINFO (its low 36 bits of bytes 18-25)."""
    packed = int.from_bytes(encoded[18:26], "big") & ~(2**36 - 1) | total
    return encoded[:18] + packed.to_bytes(8, "big") + encoded[26:]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def real_recording() -> np.ndarray:
    """A real 16 kHz mono 16-bit recording where pocketsphinx-testdata is installed."""
    found = sorted(LIBRIVOX.glob("*.wav"))
    if not found:
        return NOISE
    with wave.open(str(found[0])) as reader:
        return np.frombuffer(reader.readframes(reader.getnframes()), "<i2")


def test_wav_and_flac_decode_to_the_same_samples() -> None:
    pcm = real_recording()
    from_wav, from_flac = read_recording(wav(pcm)), read_recording(flac(pcm))
    np.testing.assert_array_equal(from_wav.samples, pcm / np.float32(32768))
    np.testing.assert_array_equal(from_flac.samples, from_wav.samples)
    assert from_wav.samples.dtype == np.float32 and from_wav.summary == from_flac.summary
    assert from_wav.summary["seconds"] == len(pcm) / 16_000
    assert bytes(from_flac).startswith(b"fLaC")  # the bytes as sent, beside the samples


def test_the_summary_of_known_signals() -> None:
    sine = np.sin(2 * np.pi * 440 * np.arange(32_000) / 16_000)
    full = recording_summary(np.round(sine * 32767) / 32768)
    assert full["seconds"] == 2.0
    assert full["peak_dbfs"] == pytest.approx(0.0, abs=0.01)
    assert full["loudness_dbfs"] == pytest.approx(-3.01, abs=0.01)
    assert recording_summary(sine * 0.5)["peak_dbfs"] == pytest.approx(-6.02, abs=0.01)
    silence = recording_summary(np.zeros(16_000, np.float32))
    assert silence == {"seconds": 1.0, "loudness_dbfs": SILENCE_DBFS, "peak_dbfs": SILENCE_DBFS}


# Each refused recording and what its error must say it found
REFUSED = {
    "8 kHz": (wav(NOISE, rate=8_000), "a WAV of 8000 Hz, 1 channel, 16-bit"),
    "stereo": (wav(np.repeat(NOISE, 2), channels=2), "16000 Hz, 2 channels, 16-bit"),
    "8-bit": (wav((NOISE // 256 + 128).astype(np.uint8), width=1), "1 channel, 8-bit"),
    "float": (float_wav(NOISE / 32768), r"a 32-bit float WAV \(format tag 3\)"),
    "truncated": (wav(NOISE)[:-1000], "truncated: its WAV header declares 16000 samples"),
    "cut header": (wav(NOISE)[:30], r"a WAV that does not parse \(EOFError: cut short\)"),
    "mp3": (b"ID3\x04\x00\x00" + bytes(200), "an MP3, starting b'ID3"),
    "ogg": (b"OggS\x00\x02" + bytes(200), "an Ogg"),
    "garbage": (bytes(RNG.integers(0, 256, 300, dtype=np.uint8)), "unknown bytes, starting"),
    "empty": (b"", "no bytes"),
    "no samples": (wav(NOISE[:0]), "recording has no samples"),
    "too long": (wav(np.zeros(MAX_SAMPLES + 1, np.int16)), "480001 samples .* longer than"),
    "flac 8 kHz": (flac(NOISE, rate=8_000), "a FLAC of 8000 Hz, 1 channel, 16-bit"),
    "flac stereo": (flac(NOISE, layout="stereo"), "a FLAC of 16000 Hz, 2 channels, 16-bit"),
    "flac cut": (flac(NOISE)[:2000], "a FLAC that does not decode"),
    "flac short": (declaring(flac(NOISE), 20_000), "declares 20000 samples, 16000 decode"),
    "flac header": (b"fLaC" + bytes(100), "a FLAC of 0 Hz"),
    "flac headless": (b"fLaC\x84" + bytes(100), "without its STREAMINFO"),
    "flac too long": (flac(np.zeros(MAX_SAMPLES + 1, np.int16)), "480001 samples"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_other_recordings_are_refused_saying_what_was_found(case: str) -> None:
    raw, found = REFUSED[case]
    with pytest.raises(ValueError, match=found):
        read_recording(raw)


def test_a_wav_claiming_a_huge_length_is_refused_before_its_samples_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header = bytearray(wav(NOISE[:20]))
    header[40:44] = struct.pack("<I", 0xFFFFFFFE)  # the data chunk's size: 2**31 samples
    monkeypatch.setattr(wave.Wave_read, "readframes", lambda *_: pytest.fail("samples read"))
    with pytest.raises(ValueError, match=r"2147483647 samples .* longer than the field's"):
        read_recording(bytes(header))


def test_a_flac_is_decoded_no_further_than_the_cap() -> None:
    """2 min of silence is a few KB of FLAC: refused from its header, and where the header
    says nothing (a total of 0), once the decoded samples pass the cap."""
    quiet = flac(np.zeros(120 * 16_000, np.int16))
    assert len(quiet) < 50_000
    with pytest.raises(ValueError, match="1920000 samples"):
        read_recording(quiet)
    with pytest.raises(ValueError, match=r"recording of 48\d{4} samples .* longer than the"):
        read_recording(declaring(quiet, 0))  # stopped within a frame (4608) of the cap


@pytest.mark.parametrize("maker", [wav, flac])
def test_mangled_recordings_raise_value_errors_only(maker: object) -> None:
    good = maker(NOISE[:4000])  # type: ignore[operator]
    rng = random.Random(0)
    for _ in range(150):
        mangled = bytearray(good[: rng.randrange(len(good) + 1)])
        for _ in range(rng.randrange(4)):
            if mangled:
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        with contextlib.suppress(ValueError):  # anything else fails the test
            read_recording(bytes(mangled), 8000)


def test_recordings_are_padded_to_the_longest_and_cut_back_to_their_own() -> None:
    short, long = read_recording(wav(NOISE[:5])), read_recording(flac(NOISE[:9]))
    batch, sizes = recording_tensors([short, long], MAX_SAMPLES)
    assert batch.shape == (2, 9) and batch.dtype == np.float32 and sizes.tolist() == [[5], [9]]
    assert not batch[0, 5:].any() and sizes.dtype == np.int64
    first, second = each_record({"speech": batch, "speech" + SIZE_SUFFIX: sizes}, SPEECH)
    np.testing.assert_array_equal(first["speech"][0], short.samples)
    np.testing.assert_array_equal(second["speech"][0], long.samples)
    assert input_names(SPEECH) == ["speech", "speech_size"] and one_at_a_time(SPEECH)
    # the stages' tensors of the split's bytes are the service's of the validated records
    records = [record_model(SPEECH).model_validate({"speech": b64(r)}) for r in (short, long)]
    served = record_feeds(records, SPEECH)
    staged = onnx_feeds(pd.DataFrame({"speech": [bytes(short), bytes(long)]}), SPEECH)
    for name in served:
        np.testing.assert_array_equal(served[name], staged[name])


def test_the_drift_view_reads_a_logged_summary_as_the_recording() -> None:
    """A logged recording is three numbers, not 1 MB of base64, and the drift view of them is
    the view of the recording itself (the reference's rows, bytes or base64 text)."""
    raw = flac(real_recording())
    recording = record_model(SPEECH).model_validate({"speech": b64(raw)}).speech  # type: ignore[attr-defined]
    assert isinstance(recording, Recording)
    logged = predlog.loads(predlog.dumps(predlog.table(["speech"], [(recording,)])))
    assert len(predlog.dumps(logged)) < 200
    from_log = reference.drift_view(SPEECH, pd.DataFrame(predlog.records_of(logged)))
    from_split = reference.drift_view(SPEECH, pd.DataFrame({"speech": [raw]}))
    from_text = reference.drift_view(SPEECH, pd.DataFrame({"speech": [b64(raw)]}))
    pd.testing.assert_frame_equal(from_log, from_split)
    pd.testing.assert_frame_equal(from_log, from_text)
    columns = ["speech.seconds", "speech.loudness_dbfs", "speech.peak_dbfs"]
    assert list(from_log.columns) == columns
    assert set(columns) <= set(reference.columns(SPEECH).features)
    assert from_log.loc[0, "speech.seconds"] == len(real_recording()) / 16_000
    missing = reference.drift_view(SPEECH, pd.DataFrame({"speech": [None, b"RIFF junk", 3.5]}))
    assert missing.isna().all().all()


def test_a_tensor_request_logs_each_recordings_summary() -> None:
    """OIP v2: the log keeps each recording's summary (not its padded samples, nor sizes),
    which the drift view reads as it reads /predict's records."""
    raws = [wav(NOISE[:4000]), flac(NOISE)]
    feeds = recording_feeds("speech", SPEECH.fields["speech"], np.array(raws, object), "BYTES")
    head = (1.0, "r", SPEECH.key, "1", "champion", "/v2/infer")
    row = predlog.tensor_row(head, logged_tensors(feeds, SPEECH), [{"value": 1}, {"value": 2}])
    inputs = predlog.records_of(predlog.loads(row[8]))
    assert [set(r) for r in inputs] == [{"speech"}, {"speech"}]
    window = reference.drift_view(SPEECH, pd.DataFrame(inputs))
    split = reference.drift_view(SPEECH, pd.DataFrame({"speech": raws}))
    pd.testing.assert_frame_equal(window, split)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b64(REFUSED["8 kHz"][0]), "8000 Hz, 1 channel"),
        (b64(REFUSED["mp3"][0]), "an MP3"),
        ("not base64!", "not valid base64"),
        ("", "no bytes"),
        (12, "valid string"),
        ({"samples": [0.1]}, "valid string"),
    ],
)
def test_a_bad_recording_is_a_validation_error(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        record_model(SPEECH).model_validate({"speech": value})


def test_a_recording_over_the_byte_cap_is_refused_before_decoding() -> None:
    huge = "A" * (4 * 2**20)
    with pytest.raises(ValidationError, match="at most"):
        record_model(SPEECH).model_validate({"speech": huge})
    with pytest.raises(TensorError, match=r"speech\[0\]: recording of \d+ bytes is over"):
        recording_feeds(
            "speech", SPEECH.fields["speech"], np.array([bytes(2**21)], object), "BYTES"
        )


def test_oip_tensors_of_recordings_name_the_bad_element() -> None:
    field = SPEECH.fields["speech"]
    good, bad = wav(NOISE), REFUSED["stereo"][0]
    with pytest.raises(TensorError, match=r"speech\[1\]: .*2 channels"):
        recording_feeds("speech", field, np.array([good, bad], object), "BYTES")
    with pytest.raises(TensorError, match="datatype FP32"):
        recording_feeds("speech", field, np.zeros((1, 10), np.float32), "FP32")
    feeds = recording_feeds("speech", field, np.array([b64(good)], object), "BYTES")
    assert feeds["speech"].shape == (1, 16_000) and feeds["speech_size"].tolist() == [[16_000]]


def mean_amplitude_graph(path: Path) -> None:
    """A stand-in speech model: each recording's mean |sample| over its own length."""
    nodes = [
        helper.make_node("Abs", ["speech"], ["magnitude"]),
        helper.make_node("ReduceSum", ["magnitude", "axis"], ["total"], keepdims=1),
        helper.make_node("Cast", ["speech_size"], ["count"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["total", "count"], ["prediction"]),
    ]
    graph = helper.make_graph(
        nodes, "speech",
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["n", "t"]),
         helper.make_tensor_value_info("speech_size", TensorProto.INT64, ["n", 1])],
        [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["n", 1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    fields = '{"speech": {"type": "audio"}}'
    helper.set_model_props(model, {"model": SPEECH.key, "fields": fields})
    onnx.save(model, path)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The service's app over the stand-in graph (loaded by the service's own `load`)."""
    monkeypatch.setattr(app_module, "get_spec", lambda key: SPEECH)
    settings = ServeSettings(
        model=SPEECH.key, prediction_log="off", cache_dir=tmp_path, reload_interval_s=0
    )
    app = app_module.create_app(SPEECH.key, settings)
    mean_amplitude_graph(tmp_path / "model.onnx")
    artifact = Artifact(SPEECH.key, "champion", "1", "", tmp_path / "model.onnx", {}, "cache")
    app.state.service.lineup.champion = load(SPEECH, artifact)
    yield TestClient(app)


def test_the_service_answers_recordings_and_names_the_field_of_a_bad_one(
    client: TestClient,
) -> None:
    short, long = NOISE[:4000], NOISE
    body = {"records": [{"speech": b64(wav(short))}, {"speech": b64(flac(long))}]}
    answered = client.post("/predict", json=body)
    assert answered.status_code == 200, answered.text
    values = [p["value"] for p in answered.json()["predictions"]]
    assert values == pytest.approx([np.abs(s / 32768).mean() for s in (short, long)], rel=1e-5)
    for bad in [b64(REFUSED["8 kHz"][0]), b64(REFUSED["float"][0]), "%%%", 7, None]:
        refused = client.post("/predict", json={"records": [{"speech": bad}]})
        assert refused.status_code == 400, refused.text
        assert {e["field"] for e in refused.json()["detail"]} == {"records.0.speech"}
    too_many = {"records": [{"speech": b64(wav(short))}] * (MAX_RECORDINGS + 1)}
    over = client.post("/predict", json=too_many)
    assert over.status_code == 413 and over.json()["detail"][0]["field"] == "records"


def test_the_oip_route_takes_recordings_as_bytes(client: TestClient) -> None:
    metadata = client.get(f"/v2/models/{SPEECH.key}").json()
    assert metadata["inputs"] == [{"name": "speech", "datatype": "BYTES", "shape": [-1]}]
    inputs = [{"name": "speech", "datatype": "BYTES", "shape": [1], "data": [b64(wav(NOISE))]}]
    answered = client.post(f"/v2/models/{SPEECH.key}/infer", json={"inputs": inputs})
    assert answered.status_code == 200, answered.text
    (output,) = answered.json()["outputs"]
    assert output["data"] == pytest.approx([np.abs(NOISE / 32768).mean()], rel=1e-5)
    inputs[0]["data"] = [b64(REFUSED["8 kHz"][0])]
    refused = client.post(f"/v2/models/{SPEECH.key}/infer", json={"inputs": inputs})
    assert refused.status_code == 400 and refused.json()["detail"][0]["field"] == "speech[0]"


def test_speech_requests_carry_few_records() -> None:
    assert records_limit(SPEECH, 1000) == MAX_RECORDINGS


def entry(**speech: object) -> dict[str, object]:
    """house_prices' catalog entry with one audio field `speech`, its log joined to nothing."""
    fields = {"speech": {"type": "audio"} | speech}
    return load_params()["models"]["house_prices"] | {"fields": fields, "production": {}}


@pytest.mark.parametrize(
    "speech", [{}, {"shape": [16_000, 2]}, {"shape": [MAX_SAMPLES + 1]}, {"shape": [0]},
               {"shape": [16_000], "nullable": True}],
)  # fmt: skip
def test_an_audio_field_needs_its_longest_recording_and_a_value(speech: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match=r"audio fields need shape: \[max_samples\]"):
        ModelSpec(key="house_prices", **entry(**speech))
    assert ModelSpec(key="house_prices", **entry(shape=[16_000])).fields["speech"].type == "audio"


def test_the_raw_data_check_decodes_each_recording_by_the_service_rules() -> None:
    frame = pd.DataFrame({"speech": [wav(NOISE), flac(NOISE)], "seconds": [1.0, 1.0]})
    assert len(validate_raw(frame, SPEECH)) == 2
    with pytest.raises(SchemaViolation, match=r"'speech'.*16 kHz mono 16-bit WAV or FLAC"):
        validate_raw(frame.assign(speech=[wav(NOISE), REFUSED["stereo"][0]]), SPEECH)


def test_clients_send_recordings_as_base64_or_raw_bytes() -> None:
    frame = pd.DataFrame({"speech": [wav(NOISE[:100])]})
    (record,) = as_records(frame, SPEECH)
    assert base64.b64decode(record["speech"]) == wav(NOISE[:100])
    assert as_tensors(frame, SPEECH, binary=True)["speech"].tolist() == [wav(NOISE[:100])]
    assert decode_recording(base64.b64decode(record["speech"])).size == 100


def test_the_tools_handle_recordings() -> None:
    """The load test's malformed body is a 400 naming the field, speech is paced rarer still,
    the drift demo's shift keeps recordings valid (12 dB quieter), the card says the format."""
    (record,) = as_records(pd.DataFrame({"speech": [wav(NOISE)]}), SPEECH)
    body, name = payloads.Pool(SPEECH.key, [record]).malformed(random.Random(0), SPEECH)
    with pytest.raises(ValidationError, match="not valid base64"):
        record_model(SPEECH).model_validate(body["records"][0])
    assert name == "speech" and payloads.share(SPEECH) == payloads.RECORDING_SHARE
    (quieter,) = drift_demo.shift(SPEECH, pd.DataFrame({"speech": [flac(NOISE)]}))["speech"]
    before, after = (read_recording(r).summary for r in (flac(NOISE), quieter))
    assert after["peak_dbfs"] == pytest.approx(before["peak_dbfs"] - 12.04, abs=0.01)
    assert "WAV or FLAC, at most 30 s" in model_card._field_line("speech", SPEECH)


def test_a_speech_model_cannot_learn_from_its_log() -> None:
    """The log keeps each recording's summary: nothing a retraining could hear."""
    with pytest.raises(ValidationError, match=r"keeps a summary of \['speech'\]"):
        ModelSpec(
            key="house_prices", **(entry(shape=[16_000]) | {"production": {"join": "append"}})
        )
