"""Speech recognition through the stages: recordings in, transcripts out.

The estimator (pipelines/estimators/speech_recognizer.py) assembles Whisper base's
CTranslate2 directory from its wheels; nothing is fitted. What is exported is Whisper's
log-mel front end as an ONNX graph (opset 18's STFT): the audio field's samples [N, T] and
their counts [N, 1] in, each record cut to its count inside the graph, the features [N, 80,
frames] out, the decoding settings in its metadata; the CTranslate2 files are served beside
it (`serving_files`). The service runs faster-whisper with the graph as its front end
(contract/speech.py `TranscriptionSession`), so export checks two things: the transcripts of
that session against the native model's (faster-whisper with its own numpy front end) on
every test recording, scored as the task scores them (a word error rate of one against the
other after its normalisation, at most export's TEXT_TOLERANCE), and the graph's features
against the numpy ones (`check_served`, within export's tolerance). The graph computes in
float64: ONNX Runtime's float32 STFT is 4e-3 off numpy's float32 FFT in the scaled log-mel,
enough to flip a comma of greedy decoding ("woman he" / "woman, he"); in float64 it is
within 5e-6 of numpy, for 0.2 s of a core per 30 s of speech (the decoder takes ~1.5 s).
Even 5e-6 can tip a close call of the int8 decoder (its activations are quantized as it
runs): on an AMD EPYC of 2026-11-26 none of the 10 real recordings' transcripts changed, 8
of the 20 synthetic ones did (a comma, an uncertain word: WER 29.9% served, 30.7% native),
none at compute_type float32; on one of 2026-11-27 a real card's "5, 5" is "5 5" served (the
same words).
"""

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from contract import paths
from contract.audio import SAMPLE_RATE, decode_recording
from contract.catalog import ModelSpec
from contract.feeds import SIZE_SUFFIX
from contract.speech import FEATURES, MODEL_FILES, PADDING, SETTINGS, answers
from pipelines.cli import StageError
from pipelines.log import get_logger

log = get_logger(__name__)
OPSET = 18  # STFT


def _field(spec: ModelSpec) -> str:
    (name,) = spec.fields
    return name


def recordings(frame: pd.DataFrame, spec: ModelSpec) -> list[np.ndarray]:
    """Each row's samples, float32 in [-1, 1), decoded by the service's rules."""
    name = _field(spec)
    (limit,) = spec.fields[name].shape or [0]
    return [decode_recording(v, limit) for v in frame[name]]


def fit(estimator: Any, train: pd.DataFrame, spec: ModelSpec, out: Path) -> Any:
    """The model directory assembled in `out`: Whisper is used as shipped (the train split's
    synthetic speech is evaluated, never trained on)."""
    return estimator.fit(out)


def outputs(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> dict[str, np.ndarray]:
    """The native model's outputs (text, confidence, seconds, words), a record at a time."""
    found = recordings(frame, spec)
    started = time.perf_counter()
    heard = [model.transcribe(samples) for samples in found]
    seconds = sum(len(s) for s in found) / SAMPLE_RATE
    log.info(
        "%s: %d recordings (%.1f s of speech) transcribed in %.1fs",
        spec.key, len(found), seconds, time.perf_counter() - started,
    )  # fmt: skip
    return answers(heard, np.array([len(s) for s in found], np.int64))


def predict(model: Any, frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The native transcripts, object [N]: what the served session must match."""
    wanted = spec.task_kind.JUDGED_OUTPUTS
    result = outputs(model, frame, spec)
    return spec.task_kind.native({o: result[o] for o in wanted}, frame, spec)


def save(model: Any, directory: Path) -> None:
    """The model's files are its directory (fit assembled it there): copied elsewhere."""
    directory.mkdir(parents=True, exist_ok=True)
    if Path(model.directory).resolve() != directory.resolve():
        for name in MODEL_FILES:
            (directory / name).write_bytes((Path(model.directory) / name).read_bytes())


def load(directory: Path, spec: ModelSpec) -> Any:
    from pipelines.models import get_project  # the catalog module knows its estimator

    return get_project(spec.key).build(spec).restore(directory)


def front_end(field: str, mel_filters: np.ndarray) -> onnx.ModelProto:
    """Whisper's log-mel features as faster-whisper's FeatureExtractor computes them, in
    float64: samples cut to the longest count, PADDING zeros appended (at least enough for
    one window: ONNX's reflection cannot pass its input's length), reflected by n_fft / 2 at
    both ends, a 400-sample Hann STFT every 160 samples, the power of all but the last frame
    on the mel bands, log10, floored 8 below each record's peak, scaled by (x + 4) / 4."""
    nodes = [
        helper.make_node("ReduceMax", [field + SIZE_SUFFIX], ["longest"], keepdims=0),
        helper.make_node("Reshape", ["longest", "one"], ["end"]),
        helper.make_node("Slice", [field, "zero", "end", "one"], ["cut32"]),
        helper.make_node("Cast", ["cut32"], ["cut"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["window_length", "end"], ["short"]),
        helper.make_node("Max", ["short", "padding"], ["tail"]),
        helper.make_node("Concat", ["no_pads", "tail"], ["tail_pads"], axis=0),
        helper.make_node("Pad", ["cut", "tail_pads"], ["tailed"], mode="constant"),
        helper.make_node("Pad", ["tailed", "centre"], ["padded"], mode="reflect"),
        helper.make_node("Unsqueeze", ["padded", "two"], ["signal"]),
        helper.make_node("STFT", ["signal", "hop", "window", "n_fft"], ["spectrum"], onesided=1),
        helper.make_node("Mul", ["spectrum", "spectrum"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "last"], ["power"], keepdims=0),
        helper.make_node("Slice", ["power", "zero", "last", "one"], ["frames"]),
        helper.make_node("MatMul", ["frames", "mel"], ["mels"]),
        helper.make_node("Max", ["mels", "floor"], ["clipped"]),
        helper.make_node("Log", ["clipped"], ["ln"]),
        helper.make_node("Mul", ["ln", "inv_ln10"], ["log10"]),
        helper.make_node("ReduceMax", ["log10", "frames_and_mels"], ["peak"], keepdims=1),
        helper.make_node("Sub", ["peak", "eight"], ["lowest"]),
        helper.make_node("Max", ["log10", "lowest"], ["limited"]),
        helper.make_node("Add", ["limited", "four"], ["shifted"]),
        helper.make_node("Div", ["shifted", "four"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["transposed"], perm=[0, 2, 1]),
        helper.make_node("Cast", ["transposed"], [FEATURES], to=TensorProto.FLOAT),
    ]
    n_fft, hop = 400, 160
    constants = {
        "zero": np.array([0], np.int64),
        "one": np.array([1], np.int64),
        "two": np.array([2], np.int64),
        "last": np.array([-1], np.int64),
        "window_length": np.array([n_fft // 2 + 1], np.int64),  # the reflection's minimum
        "padding": np.array([PADDING], np.int64),
        "no_pads": np.zeros(3, np.int64),
        "centre": np.array([0, n_fft // 2, 0, n_fft // 2], np.int64),
        "hop": np.array(hop, np.int64),
        # faster-whisper's periodic Hann window (float32 values)
        "window": np.hanning(n_fft + 1)[:-1].astype(np.float32).astype(np.float64),
        "n_fft": np.array(n_fft, np.int64),
        "mel": np.ascontiguousarray(mel_filters.T, np.float64),  # [201, 80]
        "floor": np.array(1e-10, np.float64),
        "inv_ln10": np.array(1 / np.log(10), np.float64),
        "frames_and_mels": np.array([1, 2], np.int64),
        "eight": np.array(8.0, np.float64),
        "four": np.array(4.0, np.float64),
    }
    inputs = [
        helper.make_tensor_value_info(field, TensorProto.FLOAT, ["batch", "samples"]),
        helper.make_tensor_value_info(field + SIZE_SUFFIX, TensorProto.INT64, ["batch", 1]),
    ]
    bands = mel_filters.shape[0]
    output = helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", bands, "frames"])
    initializers = [numpy_helper.from_array(v, name) for name, v in constants.items()]
    graph = helper.make_graph(nodes, "whisper_log_mel", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def to_onnx(model: Any, spec: ModelSpec) -> onnx.ModelProto:
    """The front end's graph, the decoding settings in its metadata."""
    graph = front_end(_field(spec), model.front_end.mel_filters)
    onnx.helper.set_model_props(graph, {SETTINGS: json.dumps(model.settings, sort_keys=True)})
    return graph


def serving_files(model: Any) -> list[Path]:
    """The CTranslate2 model the service decodes with (registered beside the graph, each
    checksummed)."""
    return [Path(model.directory) / name for name in MODEL_FILES]


def check_served(
    session: Any, test: pd.DataFrame, spec: ModelSpec, model: Any, tolerance: float
) -> None:
    """The served front end (the graph, as faster-whisper calls it) against the native one
    on every test recording: the same frames, features within `tolerance` (the transcripts
    were compared exactly: export's parity)."""
    served, native = session.model.feature_extractor, model.front_end
    worst = 0.0
    for i, samples in enumerate(recordings(test, spec)):
        exported, expected = served(samples), native(samples)
        if exported.shape != expected.shape:
            raise StageError(
                f"the ONNX front end gives features {list(exported.shape)} for test recording "
                f"{i}, faster-whisper {list(expected.shape)}"
            )
        worst = max(worst, float(np.abs(exported - expected).max()))
    if not worst <= tolerance:  # also catches NaN
        raise StageError(
            f"the ONNX front end's features differ from faster-whisper's by {worst:.3g} "
            f"(> {tolerance}) on the test recordings"
        )
    log.info("%s: ONNX front end vs faster-whisper's, max difference %.2g", spec.key, worst)


def explain(model: Any, test: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame | None:
    return None


def report(
    model: Any, spec: ModelSpec, test: pd.DataFrame, predicted: np.ndarray, root: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """(views, metrics): the test recordings' confidences, and the train split's synthetic
    speech (espeak-ng reading review sentences) transcribed and scored, reported beside the
    real recordings' floor (`wer_synthetic`, `words_synthetic`), never floored: a robot
    voice's names and brands are not what the model is for."""
    confidence = outputs(model, test, spec)["confidence"]  # heard once: predict's
    train = pd.read_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    if train.empty:
        return {"confidence": confidence}, {}
    heard = outputs(model, train, spec)
    references = spec.task_kind.encode_target(train[spec.target.column], spec)
    scores = spec.task_kind.score(spec, references, heard["text"])
    synthetic = {"references": references, "texts": heard["text"]}
    synthetic["confidence"] = heard["confidence"]
    metrics = {"wer_synthetic": scores["wer"], "words_synthetic": scores["words"]}
    return {"confidence": confidence, "synthetic": synthetic}, metrics
