"""speech_to_text's parts on the real model and a real recording: the log-mel front end's
graph against faster-whisper's own, the model directory assembled from the wheels (and
refused on a wrong checksum), Whisper's normalised word error rate, the transcription task's
answers and outcomes, and the served session transcribing a spoken "five five"."""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import TypeAdapter, ValidationError

from contract.audio import SAMPLE_RATE, read_recording
from contract.speech import MODEL_FILES, SETTINGS, TranscriptionSession
from contract.tasks import SCORE
from contract.tasks import transcription as TASK
from contract.tasks.common import ServedGraph
from pipelines.cli import StageError
from pipelines.estimators.speech_recognizer import SpeechRecognizer, Transcriber, assemble
from pipelines.export import check_parity, describe
from pipelines.flavors import speech
from pipelines.models.speech_to_text import first_sentence
from tests.conftest import CATALOG, unavailable

SPEC = CATALOG["speech_to_text"]
CARD = Path("/usr/share/pocketsphinx/test/data/cards/004.wav")  # "five five"


@pytest.fixture(scope="module", autouse=True)
def recordings() -> None:
    if not CARD.exists():
        unavailable("pocketsphinx-testdata is not installed (apt-get install it)")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Transcriber]:
    """The model directory as the train stage assembles it (~0.5 s)."""
    out = tmp_path_factory.mktemp("speech_model")
    yield SpeechRecognizer(SPEC.params).fit(out)


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return read_recording(CARD.read_bytes()).samples


def graph_session(model: Transcriber) -> ort.InferenceSession:
    graph = describe(speech.to_onnx(model, SPEC), SPEC)
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_front_end_graph_is_faster_whispers_own(
    model: Transcriber, samples: np.ndarray
) -> None:
    """The same frames and features within 1e-4 (5e-6 measured: the graph computes in
    float64), each record cut to its own count inside the graph, however it is padded."""
    session = graph_session(model)
    padded = np.zeros((1, len(samples) + 3000), np.float32)
    padded[0, : len(samples)] = samples
    sizes = np.array([[len(samples)]], np.int64)
    (features,) = session.run(["features"], {"speech": padded, "speech_size": sizes})
    expected = model.front_end(samples)
    assert features.shape == (1, *expected.shape) == (1, 80, 156)
    assert np.abs(features[0] - expected).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta[SETTINGS]) == model.settings and model.settings["language"] == "en"


def test_the_model_directory_is_assembled_from_the_wheels(model: Transcriber) -> None:
    assert sorted(p.name for p in model.directory.iterdir()) == sorted(MODEL_FILES)
    assert (model.directory / "model.bin").stat().st_size == 145_217_607
    assert speech.serving_files(model) == [model.directory / n for n in MODEL_FILES]


def test_a_wrong_checksum_is_refused_naming_both(tmp_path: Path, model: Transcriber) -> None:
    wrong = "0" * 64
    with pytest.raises(StageError, match=f"{SPEC.params['model_sha256']}.*expected {wrong}"):
        assemble(tmp_path, wrong)
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left
    with pytest.raises(StageError, match=f"expected {wrong}"):
        SpeechRecognizer(SPEC.params | {"model_sha256": wrong}).restore(model.directory)


@pytest.mark.parametrize(
    ("reference", "heard", "wer"),
    [
        ("ten of clubs", "10 of clubs.", 0.0),  # numbers as digits
        ("five five", "5, 5.", 0.0),  # "55" either way: adjacent digits joined
        ("and mister john dashwood", "And Mr. John Dashwood", 0.0),
        ("he was not an ill disposed young man", "He was not an ill-disposed young man.", 0.0),
        ("seven of clubs", "7 clubs", 1 / 3),  # a dropped word counts
        ("four queen of clubs", "4 Queen of Cloves", 1 / 4),
    ],
)
def test_the_word_error_rate_is_whispers_normalised_one(
    reference: str, heard: str, wer: float
) -> None:
    found = TASK.score(SPEC, np.array([reference], object), np.array([heard], object))
    assert found["wer"] == pytest.approx(wer, abs=1e-6)


def test_the_word_error_rate_is_pooled_over_the_recordings() -> None:
    """(1 deletion + 1 substitution) / 7 reference words, not the mean of 1/3 and 1/4."""
    y = np.array(["seven of clubs", "four queen of clubs"], object)
    found = TASK.score(SPEC, y, np.array(["7 clubs", "4 Queen of Cloves"], object))
    assert found["wer"] == pytest.approx(2 / 7, abs=1e-6)
    assert (found["substitutions"], found["deletions"], found["insertions"]) == (1, 1, 0)
    assert found["words"] == 7 and 0 < found["cer"] < found["wer"]


def test_answers_their_drift_view_and_outcomes() -> None:
    result = {
        "text": np.array(["5 5", ""], object),
        "confidence": np.array([0.8, 0.0], np.float32),
        "seconds": np.array([1.5, 2.0], np.float32),
        "words": np.array([2, 0], np.float32),
    }
    answers = TASK.format(result, ServedGraph(SPEC, {}))
    assert answers[0] == {"text": "5 5", "confidence": pytest.approx(0.8), "seconds": 1.5}
    view = TASK.answered(SPEC, answers[0])
    assert view == {SCORE: pytest.approx(0.8), TASK.WORDS: 2, TASK.WORDS_PER_SECOND: 2 / 1.5}
    assert TASK.answered(SPEC, answers[1])[TASK.WORDS_PER_SECOND] == 0.0
    assert set(TASK.answered(SPEC, {}).values()) == {None}  # what the answer lacks
    outcome = TypeAdapter(TASK.outcome(SPEC))
    outcomes = [outcome.validate_python(o) for o in ("five five", "ten of clubs")]
    performance = TASK.performance(SPEC, answers, outcomes)  # "55" heard; 3 words missed
    assert performance["wer"] == pytest.approx(3 / 4) and performance["words"] == 4
    for wrong in ("", "   ", 55):
        with pytest.raises(ValidationError):
            outcome.validate_python(wrong)


def test_texts_are_scored_against_the_native_ones_at_export() -> None:
    """Export's parity of transcripts: the task's word error rate of the served texts against
    the native ones (a comma an int8 decoder's close call flips is no error; "5, 5" and "5 5"
    were measured on a real recording), at most TEXT_TOLERANCE; a changed word is."""
    native = np.array(["5, 5", "10 of clubs.", *["the quick brown fox jumps over it"] * 4], object)
    assert check_parity(native, native.copy(), SPEC) == 0.0
    punctuated = native.copy()
    punctuated[:2] = ["5 5", "10 of clubs"]
    assert check_parity(native, punctuated, SPEC) == 0.0
    one_word = native.copy()
    one_word[2] = "the quick brown box jumps over it"  # 1 of 32 words ("5, 5" is "55")
    with pytest.raises(StageError, match=r"on 1 of 6 test rows .* wer 0.0312 .* > 0.02"):
        check_parity(native, one_word, SPEC)


def test_a_review_becomes_one_short_sentence() -> None:
    review = "Great coffee.<br />I buy it every week! It is " + "very " * 40 + "good"
    assert first_sentence(review) == "Great coffee."
    assert first_sentence("No end " + "word " * 40) == " ".join(["No", "end", *["word"] * 23])


def test_the_served_session_transcribes_a_recording(
    model: Transcriber, samples: np.ndarray, tmp_path: Path
) -> None:
    """faster-whisper on the graph's features: "five five" heard as 55 (normalised), each
    record cut to its own count; a directory without the model is refused."""
    session = TASK.serve(graph_session(model), model.directory)
    assert isinstance(session, TranscriptionSession)
    assert [i.name for i in session.get_inputs()] == ["speech", "speech_size"]
    padded = np.zeros((1, len(samples) + 8000), np.float32)  # half a second of silence after
    padded[0, : len(samples)] = samples
    text, confidence, seconds, words = session.run(
        None, {"speech": padded, "speech_size": np.array([[len(samples)]], np.int64)}
    )
    assert TASK.normaliser()(str(text[0])) == "55"
    assert 0.3 < confidence[0] <= 1 and words[0] == len(str(text[0]).split())
    assert seconds[0] == pytest.approx(len(samples) / SAMPLE_RATE)
    # the native model's transcript, as scored: the front ends' 5e-6 may flip its comma
    # ("5, 5" natively, "5 5" served, on an AMD EPYC: pipelines/flavors/speech.py)
    normalise = TASK.normaliser()
    assert normalise(str(text[0])) == normalise(model.transcribe(samples)[0])
    with pytest.raises(ValueError, match="lacks the speech model's files"):
        TASK.serve(graph_session(model), tmp_path)
