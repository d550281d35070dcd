"""Raw-data schema checks name the column; frames and ONNX feeds follow one convention."""

import numpy as np
import pandas as pd
import pytest

from contract.feeds import onnx_feeds
from pipelines.schema import SchemaViolation, encode_target, model_frame, validate_raw
from tests.conftest import CATALOG

TITANIC = CATALOG["titanic"]


def passengers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pclass": [1, 3],
            "survived": [1, 0],
            "name": ["Allen, Miss. Elisabeth", "Smith, Mr. John"],
            "sex": ["female", "male"],
            "age": [29.0, np.nan],
            "sibsp": [0, 1],
            "parch": [0, 2],
            "fare": [211.3, 7.25],
            "cabin": ["B5", None],
            "embarked": ["S", None],
        }
    )


def test_valid_frame_passes() -> None:
    assert len(validate_raw(passengers(), TITANIC)) == 2


@pytest.mark.parametrize(
    ("change", "column", "problem"),
    [
        (lambda f: f.assign(age=[29.0, 130.0]), "age", "less_than_or_equal_to"),
        (lambda f: f.assign(sex=["female", "unknown"]), "sex", "isin"),
        (lambda f: f.assign(pclass=[1.0, 2.5]), "pclass", "integral"),
        (lambda f: f.assign(fare=["cheap", "dear"]), "fare", "numeric"),
        (lambda f: f.assign(sibsp=[0, None]), "sibsp", "null"),
        (lambda f: f.drop(columns="sex"), "sex", "missing"),
        (lambda f: f.assign(boat=["2", None]), "boat", "unexpected column"),
        (lambda f: f.assign(survived=[1, 1]), "survived", "two-valued"),
    ],
)
def test_violation_names_the_column(change, column: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaViolation) as info:
        validate_raw(change(passengers()), TITANIC)
    message = str(info.value)
    assert f"column {column!r}" in message or f"'{column}'" in message
    assert problem in message


def test_model_frame_convention() -> None:
    frame = model_frame(passengers(), TITANIC)
    assert list(frame.columns) == list(TITANIC.fields)
    assert frame["age"].dtype == np.float32 and np.isnan(frame["age"].iloc[1])
    assert frame["cabin"].tolist() == ["B5", ""] and frame["embarked"].tolist() == ["S", ""]


def test_onnx_feeds_one_tensor_per_field() -> None:
    feeds = onnx_feeds(passengers(), TITANIC)
    assert set(feeds) == set(TITANIC.fields)
    assert feeds["age"].shape == (2, 1) and feeds["age"].dtype == np.float32
    assert feeds["name"].dtype == object and feeds["cabin"][1, 0] == ""


def test_image_feed_is_uint8_pixels() -> None:
    spec = CATALOG["fashion_cnn"]
    frame = pd.DataFrame({"image": [bytes(range(28)) * 28, bytes(784)], "label": [3, 9]})
    (pixels,) = onnx_feeds(frame, spec).values()
    assert pixels.shape == (2, 28, 28) and pixels.dtype == np.uint8 and pixels[0, 0, 5] == 5


def test_image_of_wrong_size_is_a_violation() -> None:
    frame = pd.DataFrame({"image": [bytes(784), bytes(100)], "label": [3, 9]})
    with pytest.raises(SchemaViolation, match="'image'"):
        validate_raw(frame, CATALOG["fashion_cnn"])


def test_target_encoding() -> None:
    assert encode_target(passengers(), TITANIC).tolist() == [1, 0]
    churn = pd.DataFrame({"churn": ["Yes", "No"]})
    assert encode_target(churn, CATALOG["churn"]).tolist() == [1, 0]
