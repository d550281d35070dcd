"""Expectations on the real data sets, for every catalog entry: what prepare hands to training."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.sources import load_source
from tests.conftest import CATALOG, KEYS, prepared

pytestmark = pytest.mark.data


EXPECTED_ROWS = {
    "house_prices": 2930,
    "titanic": 1309,
    "churn": 7043,
    "review_sentiment": 5000,
    "fashion_cnn": 70000,
    "credit_default": 4454,
    "penguins": 344,
    "spam_email": 3921,
    "shuttle_anomaly": 49097,
    "customer_segments": 7043,
    "movie_recs": 100004,
    "energy_forecast": 358,  # midnights of 2014 with a week before and a day after them
    "semantic_search": 5000,  # the fine-food reviews: 4,000 documents, 1,000 queries
    "tree_detection": 15,  # tiles: 9 + 1 + 1 train (three images), 4 test (one image)
    "fashion_segmentation": 22000,  # canvases composed at prepare: 20,000 train, 2,000 test
    "review_sentiment_transformer": 5000,  # review_sentiment's reviews and split
    "activity_recognition": 80,  # windows: 40 train, 40 test (10 per activity in each)
    "speech_to_text": 30,  # recordings: 20 synthetic (train), 10 real (test)
}


@pytest.mark.parametrize("key", KEYS)
def test_row_count(key: str) -> None:
    assert len(prepared(key)[0]) == EXPECTED_ROWS[key]


@pytest.mark.parametrize("key", KEYS)
def test_columns_are_the_fields_and_the_target(key: str) -> None:
    spec, (_, train, test) = CATALOG[key], prepared(key)
    expected = {*spec.fields, spec.target.column}
    if spec.features:  # the point-in-time join keeps the entity and the label's time
        expected |= {spec.features.entity, "event_timestamp"}
    if spec.target.item:  # a rating is of an item (its id and name), a document has an id
        expected |= {spec.target.item} | ({spec.target.item_name} - {None})
    if spec.target.time:  # a forecast's origin
        expected |= {spec.target.time}
    assert set(train.columns) == expected and set(test.columns) == expected


@pytest.mark.parametrize("key", KEYS)
def test_no_leakage_columns(key: str) -> None:
    raw = prepared(key)[0]
    assert not set(CATALOG[key].drop) & set(raw.columns)


@pytest.mark.parametrize("key", KEYS)
def test_nulls_only_where_declared(key: str) -> None:
    spec, raw = CATALOG[key], prepared(key)[0]
    with_nulls = set(raw.columns[raw.isna().any()])
    # MovieLens has 5 movies without a title (served with an empty name)
    untitled = {spec.target.item_name} if spec.target.item_name else set()
    assert with_nulls <= {n for n, f in spec.fields.items() if f.nullable} | untitled


@pytest.mark.parametrize("key", KEYS)
def test_label_values(key: str) -> None:
    spec, raw = CATALOG[key], prepared(key)[0]
    y = raw[spec.target.column]
    # clustering: the profiled value; retrieval: the label that judges relevance
    if spec.task in ("binary", "anomaly", "clustering", "retrieval"):
        assert y.nunique() == 2 and (y == spec.target.positive).mean() > 0.05
    elif spec.task == "multiclass":  # every class, by name or by index
        labels = set(y.unique())
        assert labels in ({*spec.class_names}, set(range(len(spec.class_names))))
    elif spec.task == "forecast":  # a positive series of the horizon's length
        assert all(len(v) == spec.target.horizon and (v > 0).all() for v in y)
    elif spec.task == "detection":  # boxes [xmin, ymin, xmax, ymax], a few per tile at least
        boxes = np.concatenate([np.stack(list(v)) for v in y])
        assert (boxes[:, 2:] > boxes[:, :2]).all() and y.map(len).min() > 10
    elif spec.task == "transcription":  # words spoken, some of them in every recording
        assert y.map(lambda t: isinstance(t, str) and len(t.split()) >= 2).all()
    elif spec.task == "segmentation":  # every class in the masks, background most
        pixels = np.frombuffer(b"".join(y), np.uint8)
        shares = np.bincount(pixels, minlength=len(spec.class_names)) / pixels.size
        assert len(shares) == len(spec.class_names) and (shares[1:] > 0.01).all()
        assert shares[0] == shares.max()
    else:
        assert (y > 0).all()


@pytest.mark.parametrize("key", KEYS)
def test_split_is_disjoint_and_sized(key: str) -> None:
    spec, (raw, train, test) = CATALOG[key], prepared(key)
    assert len(train) + len(test) == len(raw)
    assert not set(train.index) & set(test.index)
    if spec.split != "source":
        assert len(test) / len(raw) == pytest.approx(spec.split.test_size, abs=0.01)


@pytest.mark.parametrize(
    "key",
    [
        k
        for k in KEYS
        if CATALOG[k].task
        not in (
            "regression",
            "forecast",
            "recommendation",
            "detection",
            "segmentation",
            "transcription",
        )
    ],
)
def test_class_balance_is_kept_by_the_split(key: str) -> None:
    spec, (_, train, test) = CATALOG[key], prepared(key)
    column = spec.target.column
    share = train[column].value_counts(normalize=True)
    assert (test[column].value_counts(normalize=True) - share).abs().max() < 0.05


def test_forecast_records_see_only_the_past() -> None:
    """Each record's history is the week before its origin and its target the day after: the
    next record's history ends with this record's target, and the test split comes after
    the training split."""
    spec, (raw, train, test) = CATALOG["energy_forecast"], prepared("energy_forecast")
    history, target = spec.fields["demand_history"], spec.target.column
    for before, after in zip(raw.iloc[:-1].itertuples(), raw.iloc[1:].itertuples(), strict=True):
        np.testing.assert_array_equal(after.demand_history[-48:], getattr(before, target))
        np.testing.assert_array_equal(after.demand_history[:-48], before.demand_history[48:])
    assert (raw["origin"].diff().dropna() == pd.Timedelta(days=1)).all()
    assert train["origin"].max() < test["origin"].min()
    assert len(raw["demand_history"].iloc[0]) == (history.shape or [0])[0]
    source = load_source(spec.source)  # the first record's week is the source's first week
    np.testing.assert_array_equal(raw["demand_history"].iloc[0], source["Demand"][:336])


def test_titanic_missing_marks_become_nulls() -> None:
    raw = prepared("titanic")[0]
    assert raw["age"].isna().sum() == 263 and not (raw.select_dtypes("object") == "?").any().any()


def test_reviews_are_text() -> None:
    raw = prepared("review_sentiment")[0]
    assert raw["review"].str.len().min() > 0 and set(raw["score"]) == {"great", "other"}


def test_fashion_pixels_cover_the_full_range() -> None:
    raw = prepared("fashion_cnn")[0]
    first = bytes(raw["image"].iloc[0])
    assert len(first) == 784 and max(first) > 200 and min(first) == 0


@pytest.mark.parametrize("key", [k for k in KEYS if CATALOG[k].features])
def test_training_set_is_the_source_as_observed(key: str) -> None:
    """At each label's time the point-in-time join returns the source's own values."""
    spec, raw = CATALOG[key], prepared(key)[0]
    source = load_source(spec.source).reset_index(drop=True)
    for column in source.columns.intersection(raw.columns):
        got, want = (s.astype(object).where(s.notna(), None) for s in (raw[column], source[column]))
        pd.testing.assert_series_equal(got, want, check_dtype=False, check_names=False)
    assert raw[spec.features.entity].is_unique  # type: ignore[union-attr]


def test_credit_ratios_are_computed_by_the_on_demand_view() -> None:
    raw = prepared("credit_default")[0]
    np.testing.assert_allclose(raw["loan_to_value"], raw["Amount"] / raw["Price"])
    np.testing.assert_allclose(raw["installment"], raw["Amount"] / raw["Time"])
    expected = (raw["Amount"] / raw["Time"] / raw["Income"]).where(raw["Income"] > 0)
    np.testing.assert_allclose(raw["installment_to_income"], expected)


def test_search_corpus_is_clean_text_with_unique_ids() -> None:
    """semantic_search: every review is a document with its own id, without the site's HTML
    line breaks, and the held-out queries are not in the corpus."""
    spec, (_, train, test) = CATALOG["semantic_search"], prepared("semantic_search")
    (text,) = spec.fields
    assert spec.target.item and train[spec.target.item].is_unique
    assert not pd.concat([train[text], test[text]]).str.contains("<br", regex=False).any()
    assert (train[text].str.len() > 0).all() and (test[text].str.len() > 0).all()
    assert not set(test[spec.target.item]) & set(train[spec.target.item])


@pytest.mark.parametrize("key", KEYS)
def test_held_out_targets_are_outcomes_feedback_takes(key: str) -> None:
    """What the load test and the loop demo send back to /feedback for held-out rows is what
    the task's outcome type accepts, one per row (none for a task with no ground truth)."""
    from pydantic import TypeAdapter

    spec, (_, _, test) = CATALOG[key], prepared(key)
    task = spec.task_kind
    outcomes = task.true_outcomes(test, spec)
    annotation = task.outcome(spec)
    if annotation is None:
        assert outcomes == []
        return
    assert len(outcomes) == len(test)
    checked = TypeAdapter(list[annotation]).validate_python(outcomes)  # type: ignore[valid-type]
    assert len(checked) == len(test)


@pytest.mark.parametrize("key", [k for k in KEYS if CATALOG[k].task_kind.LEARNS_FROM_OUTCOMES])
def test_outcomes_sent_back_are_targets_again(key: str) -> None:
    """snapshot@<key> turns stored outcomes into training rows: the task's `targets` of the
    outcomes a held-out row's feedback carries code the target as the data set does."""
    spec, (_, train, test) = CATALOG[key], prepared(key)
    task = spec.task_kind
    targets = task.targets(task.true_outcomes(test, spec), spec, train[spec.target.column])
    np.testing.assert_array_equal(
        task.encode_target(targets, spec), task.encode_target(test[spec.target.column], spec)
    )
    numeric = pd.api.types.is_numeric_dtype  # a regression's int prices come back as floats
    assert numeric(targets) == numeric(train[spec.target.column])


def test_tree_tiles_hold_every_box_once() -> None:
    """Each box in the tile holding its centre: the three training images' 672 boxes and
    the held-out image's 279 (DeepForest's 951), none lost or doubled at a tile's edge."""
    _, train, test = prepared("tree_detection")
    assert train["boxes"].map(len).sum() == 672 and test["boxes"].map(len).sum() == 279
    sizes = [Image.open(io.BytesIO(v)).size for v in pd.concat([train, test])["image"]]
    assert max(w for w, _ in sizes) <= 1000 and max(h for _, h in sizes) <= 1000


def test_canvas_classes_cover_both_splits_alike() -> None:
    """Canvases of random items: each class's share of the garment pixels is the same in
    both splits within 2 points."""
    spec, (_, train, test) = CATALOG["fashion_segmentation"], prepared("fashion_segmentation")

    def shares(masks: pd.Series) -> np.ndarray:
        counts = np.bincount(np.frombuffer(b"".join(masks), np.uint8), minlength=11)[1:]
        return np.asarray(counts / counts.sum())

    assert np.abs(shares(train["mask"]) - shares(test["mask"])).max() < 0.02
    assert len(spec.class_names) == 11


def test_speech_holds_out_the_real_recordings_and_synthesises_the_same_bytes() -> None:
    """speech_to_text: the 10 Sphinx recordings are the test split (their transcripts as
    shipped), the train split is espeak-ng's reading of review sentences, the same bytes
    every time it is made (prepare is reproducible)."""
    from pipelines.models.speech_to_text import records

    spec, (_, train, test) = CATALOG["speech_to_text"], prepared("speech_to_text")
    source = load_source(spec.source)
    assert sorted(test["transcript"]) == sorted(source["transcript"])
    again = records(source, spec)
    assert again[again["split"] == "train"]["speech"].tolist() == train["speech"].tolist()
    seconds = [len(v) / 32_000 for v in train["speech"]]  # 16-bit samples at 16 kHz
    assert min(seconds) > 1 and max(seconds) < 30
