"""Behavioural tests (directional, invariance, minimum functionality) on trained models."""

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from contract import paths
from contract.catalog import ModelSpec
from contract.feeds import onnx_feeds
from pipelines.export import check_parity, describe, onnx_predict, open_session
from pipelines.models import get_project
from pipelines.segments import profiles
from pipelines.sources import load_source
from tests.conftest import CATALOG, KEYS, prepared
from tests.model.conftest import score, trained

pytestmark = [pytest.mark.model, pytest.mark.slow]

PASSENGER = {
    "pclass": 2,
    "name": "Doe, Mr. John",
    "sex": "male",
    "age": 30.0,
    "sibsp": 0,
    "parch": 0,
    "fare": 20.0,
    "cabin": None,
    "embarked": "S",
}


def test_titanic_first_class_woman_over_third_class_man() -> None:
    woman = PASSENGER | {
        "pclass": 1,
        "name": "Doe, Mrs. Jane",
        "sex": "female",
        "fare": 80.0,
        "cabin": "C85",
    }
    man = PASSENGER | {"pclass": 3, "fare": 7.9}
    p_woman, p_man = score("titanic", [woman, man])
    assert p_woman > 0.7 > 0.2 > p_man


def test_titanic_title_is_read_from_the_name() -> None:
    boy, man = score(
        "titanic", [PASSENGER | {"name": "Doe, Master. Tom", "age": 4.0}, PASSENGER | {"age": 4.0}]
    )
    assert boy > man  # same age on paper; "Master" is what marks a boy


def test_titanic_large_family_lowers_survival() -> None:
    alone, family = score(
        "titanic", [PASSENGER | {"pclass": 3}, PASSENGER | {"pclass": 3, "sibsp": 5, "parch": 2}]
    )
    assert family < alone


def house() -> dict[str, Any]:
    _, _, test = prepared("house_prices")
    return test.drop(columns="Sale_Price").iloc[0].to_dict()


def test_house_price_rises_with_living_area() -> None:
    base = house()
    prices = score(
        "house_prices", [base | {"Gr_Liv_Area": a, "First_Flr_SF": a} for a in (800, 1500, 2500)]
    )
    assert prices[0] < prices[1] < prices[2]


def test_house_price_rises_with_quality_of_neighbourhood() -> None:
    base = house()
    cheap, dear = score(
        "house_prices",
        [base | {"Neighborhood": "Meadow_Village"}, base | {"Neighborhood": "Northridge_Heights"}],
    )
    assert cheap < dear


def test_house_price_handles_unseen_category_and_missing_number() -> None:
    odd = house() | {"Neighborhood": "Atlantis", "Lot_Frontage": None}
    (price,) = score("house_prices", [odd])
    assert 20_000 < price < 800_000


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("Delicious, will buy again!", "Stale and awful."),
        (
            "My dog loves these treats, great value",
            "The package arrived broken and the taste was terrible",
        ),
        ("Best coffee I have ever had", "Worst coffee, bitter and disappointing"),
    ],
)
def test_sentiment_direction(good: str, bad: str) -> None:
    p_good, p_bad = score("review_sentiment", [{"review": good}, {"review": bad}])
    assert p_good > p_bad


def test_sentiment_is_case_and_whitespace_invariant() -> None:
    a, b = score(
        "review_sentiment",
        [{"review": "delicious, will buy again"}, {"review": "  DELICIOUS,   will buy AGAIN "}],
    )
    assert a == pytest.approx(b)


def customer(**changes: Any) -> dict[str, Any]:
    _, _, test = prepared("churn")
    return test.drop(columns="churn").iloc[0].to_dict() | changes


def test_churn_month_to_month_newcomer_over_two_year_veteran() -> None:
    newcomer = customer(
        contract="Month-to-month",
        tenure=2,
        internet_service="Fiber optic",
        payment_method="Electronic check",
        total_charges=180.0,
    )
    veteran = customer(
        contract="Two year",
        tenure=60,
        internet_service="DSL",
        payment_method="Bank transfer (automatic)",
        total_charges=3600.0,
    )
    p_new, p_old = score("churn", [newcomer, veteran])
    assert p_new > 0.4 > 0.1 > p_old


def test_churn_probabilities_are_calibrated_on_average() -> None:
    _, _, test = prepared("churn")
    predicted = score("churn", test.drop(columns="churn").to_dict("records"))
    assert predicted.mean() == pytest.approx((test["churn"] == "Yes").mean(), abs=0.03)


def applicant(**changes: Any) -> dict[str, Any]:
    _, _, test = prepared("credit_default")
    row = test.drop(columns="Status").iloc[0].to_dict() | changes
    # the on-demand ratios, as Feast computes them from the changed values
    installment = row["Amount"] / row["Time"]
    return row | {
        "loan_to_value": row["Amount"] / row["Price"],
        "installment": installment,
        "installment_to_income": installment / row["Income"] if row["Income"] else None,
    }


def test_credit_arrears_and_debt_raise_default_risk() -> None:
    clean = applicant(Records="no", Debt=0.0, Assets=8000.0, Job="fixed", Seniority=10)
    risky = applicant(Records="yes", Debt=4000.0, Assets=0.0, Job="partime", Seniority=0)
    p_clean, p_risky = score("credit_default", [clean, risky])
    assert p_risky > p_clean + 0.2


def test_credit_label_uses_the_cost_tuned_threshold() -> None:
    """A defaulter approved costs 5x a good applicant refused: refuse below P = 0.5 too."""
    spec, model = trained("credit_default")
    threshold = float(model.steps[-1][1].best_threshold_)
    assert 0.05 < threshold < 0.5
    flavor = get_project("credit_default").FLAVOR
    _, _, test = prepared("credit_default")
    session = ort.InferenceSession(
        flavor.to_onnx(model, spec).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = onnx_feeds(test, spec)
    label, probabilities = session.run(["label", "probabilities"], feeds)
    expected = (probabilities[:, 1] >= threshold).astype(np.int64)
    near = np.abs(probabilities[:, 1] - threshold) < 1e-6  # float32 rounding at the boundary
    assert (label.reshape(-1) == expected)[~near].all()
    assert ((probabilities[:, 1] >= threshold) & (probabilities[:, 1] < 0.5)).any()


PENGUIN = {
    "island": "Dream",
    "bill_length_mm": 44.0,
    "bill_depth_mm": 17.5,
    "flipper_length_mm": 195.0,
    "body_mass_g": 3800.0,
    "sex": "female",
}


def test_penguin_species_from_their_signature_traits() -> None:
    """Gentoo: long flippers, heavy, shallow bill; Chinstrap: long, deep bill; Adelie: short."""
    gentoo = PENGUIN | {"island": "Biscoe", "bill_length_mm": 47.5, "bill_depth_mm": 15.0,
                        "flipper_length_mm": 217.0, "body_mass_g": 5100.0}  # fmt: skip
    chinstrap = PENGUIN | {"bill_length_mm": 49.5, "bill_depth_mm": 18.5}
    adelie = PENGUIN | {"island": "Torgersen", "bill_length_mm": 38.5, "bill_depth_mm": 18.5}
    proba = score("penguins", [gentoo, chinstrap, adelie])
    names = CATALOG["penguins"].class_names
    assert [names[i] for i in proba.argmax(axis=1)] == ["Gentoo", "Chinstrap", "Adelie"]


def test_penguin_missing_measurements_are_imputed_not_refused() -> None:
    unknown = {name: None for name in PENGUIN if name != "island"} | {"island": "Biscoe"}
    proba = score("penguins", [unknown, PENGUIN | {"sex": None}])
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert proba[0].max() > 0.5  # Biscoe with nothing else known: mostly Gentoo's island


EMAIL = {
    "to_multiple": 0, "from": 1, "cc": 0, "sent_email": 0, "image": 0, "attach": 0,
    "dollar": 0, "winner": "no", "inherit": 0, "viagra": 0, "password": 0, "num_char": 5.0,
    "line_breaks": 100, "format": 1, "re_subj": 0, "exclaim_subj": 0, "urgent_subj": 0,
    "exclaim_mess": 0, "number": "small",
}  # fmt: skip


def test_spam_pitch_scores_above_a_reply_to_a_known_correspondent() -> None:
    reply = EMAIL | {"sent_email": 1, "re_subj": 1, "format": 0}
    pitch = EMAIL | {"winner": "yes", "dollar": 12, "exclaim_mess": 8, "exclaim_subj": 1,
                     "urgent_subj": 1, "number": "big", "line_breaks": 20}  # fmt: skip
    p_reply, p_pitch = score("spam_email", [reply, pitch])
    assert p_pitch > 0.5 > 0.05 > p_reply


def test_spam_label_is_tuned_for_precision() -> None:
    """F-0.5 puts the threshold above 0.5: fewer messages flagged, and fewer wrongly."""
    spec, model = trained("spam_email")
    threshold = float(model.steps[-1][1].best_threshold_)
    assert 0.5 < threshold < 0.99
    _, _, test = prepared("spam_email")
    p = get_project("spam_email").FLAVOR.predict(model, test, spec)[:, 1]
    y = (test[spec.target.column] == spec.target.positive).to_numpy()
    tuned, default = p >= threshold, p >= 0.5
    assert tuned.sum() < default.sum()
    assert y[tuned].mean() > y[default].mean()  # precision of the served label


def test_fashion_classifier_beats_chance_and_is_flip_invariant() -> None:
    _, _, test = prepared("fashion_cnn")
    sample = test.head(500)
    spec, model = trained("fashion_cnn")
    flavor = get_project("fashion_cnn").FLAVOR
    proba = flavor.predict(model, sample, spec)
    assert (proba.argmax(1) == sample["label"].to_numpy()).mean() > 0.6  # quick settings: 1 epoch
    flipped = sample.assign(
        image=[
            np.frombuffer(b, np.uint8).reshape(28, 28)[:, ::-1].tobytes() for b in sample["image"]
        ]
    )
    agreement = (flavor.predict(model, flipped, spec).argmax(1) == proba.argmax(1)).mean()
    assert agreement > 0.85  # trained with flips: a mirrored garment is the same garment


def served_metadata(
    flavor: Any, model: Any, spec: ModelSpec, train: pd.DataFrame, root: Path
) -> dict[str, str]:
    """What the export stage adds to the graph for the service (a segmentation's segment
    profiles): the flavor's `metadata`, on the training split written where the stage reads it."""
    found = getattr(flavor, "metadata", None)
    if found is None:
        return {}
    paths.split_dir(spec.key, root).mkdir(parents=True)
    train.to_parquet(paths.split_dir(spec.key, root) / "train.parquet")
    extra: dict[str, str] = found(model, spec, root)
    return extra


@pytest.mark.parametrize("key", KEYS)
def test_onnx_graph_reproduces_the_native_model(key: str, tmp_path: Path) -> None:
    spec, model = trained(key)
    flavor = get_project(key).FLAVOR
    _, train, test = prepared(key)
    sample = test.head(300)
    # the graph as the stage exports it (a segmentation is served only with its profiles)
    extra = served_metadata(flavor, model, spec, train, tmp_path)
    graph = describe(flavor.to_onnx(model, spec), spec, extra=extra)
    session = open_session(graph, spec, getattr(model, "directory", Path()))  # a search's index
    assert (
        check_parity(flavor.predict(model, sample, spec), onnx_predict(session, sample, spec), spec)
        < 1e-4
    )


@pytest.mark.parametrize("key", [k for k in KEYS if CATALOG[k].task in ("binary", "multiclass")])
def test_probabilities_sum_to_one(key: str) -> None:
    spec, model = trained(key)
    _, _, test = prepared(key)
    proba = get_project(key).FLAVOR.predict(model, test.head(100), spec)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("key", KEYS)
def test_training_is_reproducible(key: str, tmp_path: Path) -> None:
    spec, _ = trained(key)
    slices = {
        "fashion_cnn": {"validation_size": 500},
        "semantic_search": {"max_documents": 300},
        "tree_detection": {"steps": 5},  # each step draws crops, flips and colours: all seeded
        "review_sentiment_transformer": {"max_train": 64},  # dropout and batches: seeded
        "fashion_segmentation": {"validation_size": 200},  # on 1,000 pictures (rows below)
    }
    if key in slices:  # a slice is enough to show the seeds hold
        spec = spec.model_copy(update={"params": spec.params | slices[key]})
    project = get_project(key)
    rows = 1000 if key == "fashion_segmentation" else 3000
    train, test = prepared(key)[1].head(rows), prepared(key)[2].head(200)
    runs = [project.FLAVOR.fit(project.build(spec), train, spec, tmp_path / str(i)) for i in (1, 2)]
    first, second = (project.FLAVOR.predict(m, test, spec) for m in runs)
    assert np.array_equal(first, second)


def test_shuttle_extreme_reading_is_flagged_and_a_typical_one_is_not() -> None:
    spec, model = trained("shuttle_anomaly")
    _, _, test = prepared("shuttle_anomaly")
    flavor = get_project("shuttle_anomaly").FLAVOR
    normal = test[test["anomaly"] == 0].head(1000)
    scores = flavor.predict(model, normal, spec)
    typical = normal.iloc[int(np.argsort(scores)[len(scores) // 2])]  # the median normal row
    extreme = typical.copy()
    extreme[["f1", "f5", "f9"]] = [120, 400, 250]  # three sensors at the edge of their range
    typical_score, extreme_score = flavor.predict(model, pd.DataFrame([typical, extreme]), spec)
    threshold = -model.steps[-1][1].offset_
    assert typical_score < threshold < extreme_score


def test_shuttle_detector_never_sees_the_labels(tmp_path: Path) -> None:
    """Fitting with every label wiped gives the same detector: labels only judge it."""
    spec, model = trained("shuttle_anomaly")
    _, train, test = prepared("shuttle_anomaly")
    project = get_project("shuttle_anomaly")
    blind = project.FLAVOR.fit(project.build(spec), train.assign(anomaly=0), spec, tmp_path)
    sample = test.head(500)
    np.testing.assert_array_equal(
        project.FLAVOR.predict(blind, sample, spec), project.FLAVOR.predict(model, sample, spec)
    )


CUSTOMER = {
    "tenure": 2, "monthly_charges": 25.0, "multiple_lines": "No", "internet_service": "No",
    "online_security": "No internet service", "online_backup": "No internet service",
    "device_protection": "No internet service", "tech_support": "No internet service",
    "streaming_tv": "No internet service", "streaming_movies": "No internet service",
}  # fmt: skip


def test_segments_separate_new_basic_customers_from_loyal_full_service_ones() -> None:
    spec, model = trained("customer_segments")
    loyal = CUSTOMER | {"tenure": 60, "monthly_charges": 105.0, "multiple_lines": "Yes",
                        "internet_service": "Fiber optic"} | {
        f: "Yes" for f in ("online_security", "online_backup", "device_protection",
                           "tech_support", "streaming_tv", "streaming_movies")}  # fmt: skip
    distances = get_project("customer_segments").FLAVOR.predict(
        model, pd.DataFrame([CUSTOMER, loyal, CUSTOMER | {"tenure": 3}]), spec
    )
    new, full, also_new = distances.argmin(axis=1)
    assert new != full and new == also_new  # a month's difference does not move a customer


def test_segments_are_the_same_whatever_the_seed(tmp_path: Path) -> None:
    spec, model = trained("customer_segments")
    project = get_project("customer_segments")
    reseeded = spec.model_copy(update={"params": spec.params | {"random_state": 7}})
    _, train, test = prepared("customer_segments")
    other = project.FLAVOR.fit(project.build(reseeded), train, reseeded, tmp_path)
    first, second = (project.FLAVOR.predict(m, test, spec).argmin(axis=1) for m in (model, other))
    assert (first == second).mean() > 0.99  # the same numbering too: centres are ordered


def test_segment_profiles_differ_in_churn() -> None:
    """Churn is never an input, yet the segments' churn rates differ: they mean something."""
    spec, model = trained("customer_segments")
    _, train, _ = prepared("customer_segments")
    labels = get_project("customer_segments").FLAVOR.predict(model, train, spec).argmin(axis=1)
    rates = [profile["churn_rate"] for profile in profiles(spec, train, labels)]
    assert max(rates) > 2 * min(rates)
    assert "churn" not in spec.fields


def recommender() -> tuple[Any, Any, ort.InferenceSession]:
    spec, model = trained("movie_recs")
    flavor = get_project("movie_recs").FLAVOR
    graph = flavor.to_onnx(model, spec)  # type: ignore[attr-defined]
    return spec, model, ort.InferenceSession(graph.SerializeToString())


def lists(session: ort.InferenceSession, users: list[int]) -> dict[str, np.ndarray]:
    names = ["items", "names", "scores", "fallback"]
    feeds = {"userId": np.array(users, np.float32).reshape(-1, 1)}
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_movie_recs_never_recommends_what_the_user_rated() -> None:
    _spec, model, session = recommender()
    _, train, _ = prepared("movie_recs")
    users = [int(u) for u in train["userId"].value_counts().index[[0, 100, 300, -1]]]
    got = lists(session, users)
    for user, items in zip(users, got["items"], strict=True):
        rated = set(train.loc[train["userId"] == user, "movieId"])
        assert len(set(items)) == model.top_k and not set(items) & rated, user
    assert not got["fallback"].any()
    assert ((got["scores"] >= model.lo) & (got["scores"] <= model.hi)).all()


def test_movie_recs_unknown_user_gets_the_most_rated_movies() -> None:
    spec, model, session = recommender()
    _, train, _ = prepared("movie_recs")
    unknown = int(train["userId"].max()) + 1000
    got = lists(session, [unknown, unknown + 1])
    assert got["fallback"].all()
    most_rated = train["movieId"].value_counts()
    top = set(most_rated.index[: model.top_k + 5])  # ties in count are broken by rating
    assert set(got["items"][0]) <= top and (got["items"][0] == got["items"][1]).all()
    # its predicted ratings are the movies' own (mu + b_i): an average viewer's
    frame = pd.DataFrame({"userId": unknown, "movieId": got["items"][0]})
    expected = get_project("movie_recs").FLAVOR.predict(model, frame, spec)
    np.testing.assert_allclose(got["scores"][0], expected, atol=1e-4)


def test_movie_recs_lists_follow_what_a_user_watched(tmp_path: Path) -> None:
    """Two users who rated nothing but one kind of film (the 25 most-rated of it) get lists
    of their own, and the horror fan more horror than the other fan or the fallback."""
    spec, _ = trained("movie_recs")
    _, train, _ = prepared("movie_recs")
    source = load_source(spec.source)  # prepare drops the genres: the model never sees them
    genres = source.drop_duplicates("movieId").set_index("movieId")["genres"]
    kinds = {"children": genres.str.contains("Children"), "horror": genres.str.contains("Horror")}
    popular = train["movieId"].value_counts()
    fans = [
        pd.DataFrame({"userId": 90001 + n, "movieId": popular[popular.index.isin(
            genres.index[kind & ~other])].index[:25], "rating": 5.0, "title": "x"})
        for n, (kind, other) in enumerate([(kinds["children"], kinds["horror"]),
                                           (kinds["horror"], kinds["children"])])
    ]  # fmt: skip
    project = get_project("movie_recs")
    refit = project.FLAVOR.fit(project.build(spec), pd.concat([train, *fans]), spec, tmp_path)
    users = np.array([90001, 90002, 99999])  # the two fans and an unknown user
    top, _, fallback = project.FLAVOR.recommend(refit, users)  # type: ignore[attr-defined]
    assert fallback.tolist() == [False, False, True]
    children_fan, horror_fan, nobody = (set(refit.items[row]) for row in top)
    assert len(children_fan & horror_fan) <= 3
    assert len(children_fan - nobody) >= 5 and len(horror_fan - nobody) >= 5
    horror = genres.index[kinds["horror"]]
    assert len(horror_fan & set(horror)) > max(
        len(children_fan & set(horror)), len(nobody & set(horror))
    )


def forecast(rows: list[dict[str, Any]]) -> np.ndarray:
    spec, model = trained("energy_forecast")
    return np.asarray(
        get_project("energy_forecast").FLAVOR.predict(model, pd.DataFrame(rows), spec)
    )


def summer_day() -> dict[str, Any]:
    """The last test record (late December: summer in Victoria), as a plain record."""
    record = prepared("energy_forecast")[2].iloc[-1]
    fields = CATALOG["energy_forecast"].fields
    return {name: record[name] for name in fields}


def test_energy_heatwave_raises_the_afternoon_forecast() -> None:
    day = summer_day()
    hot = day | {"temperature": np.asarray(day["temperature"]) + 8.0}
    normal, heatwave = forecast([day, hot])
    afternoon = slice(24, 38)  # 12:00-19:00
    assert heatwave[afternoon].mean() > normal[afternoon].mean() * 1.03


def test_energy_a_sunday_needs_less_than_a_working_wednesday() -> None:
    day = summer_day()
    wednesday, sunday = forecast(
        [day | {"workday": 1, "day_of_week": 2}, day | {"workday": 0, "day_of_week": 6}]
    )
    daytime = slice(16, 36)  # 08:00-18:00
    assert sunday[daytime].mean() < wednesday[daytime].mean()


def test_energy_forecast_follows_the_level_of_the_past_week() -> None:
    day = summer_day()
    higher = day | {"demand_history": np.asarray(day["demand_history"]) * 1.15}
    base, raised = forecast([day, higher])
    assert raised.mean() > base.mean() * 1.05


def test_energy_graph_builds_the_same_features_on_unusual_records() -> None:
    """The ONNX feature builder equals the native one away from the training data too."""
    spec, model = trained("energy_forecast")
    day = summer_day()
    rows = pd.DataFrame([
        day | {"temperature": np.asarray(day["temperature"]) + 15.0},
        day | {"demand_history": np.asarray(day["demand_history"])[::-1].copy(), "workday": 0},
        day | {"day_of_week": 0, "temperature": np.linspace(-5, 45, 48)},
    ])  # fmt: skip
    flavor = get_project("energy_forecast").FLAVOR
    session = ort.InferenceSession(flavor.to_onnx(model, spec).SerializeToString())
    check_parity(flavor.predict(model, rows, spec), onnx_predict(session, rows, spec), spec)


def test_search_finds_a_text_itself_and_texts_on_its_topic() -> None:
    """Through the served path (tokenizer, ONNX encoder, FAISS): a document's own text finds
    it first, at similarity ~1, and a query about dogs finds reviews about dogs."""
    spec, model = trained("semantic_search")
    graph = describe(get_project("semantic_search").FLAVOR.to_onnx(model, spec), spec)
    session = open_session(graph, spec, model.directory)
    own = model.documents.iloc[7]
    queries = np.array([[own["text"]], ["treats my dog and puppy love to chew"]], dtype=object)
    ids, texts, scores = session.run(["ids", "texts", "scores"], {"query": queries})
    assert ids[0, 0] == own["id"] and scores[0, 0] > 0.99
    about_dogs = [any(w in t.lower() for w in ("dog", "puppy", "pup")) for t in texts[1]]
    assert sum(about_dogs) >= 8, texts[1]
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def picture(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_trees_are_found_in_forest_and_not_in_a_blank_picture() -> None:
    """Directional: a held-out tile's tenth best box scores above anything a uniform grey
    picture gets (quick settings: 40 steps); a 1x1 picture still gets valid rows."""
    spec, model = trained("tree_detection")
    flavor = get_project("tree_detection").FLAVOR
    _, _, test = prepared("tree_detection")
    forest = test.head(1)
    blank = pd.DataFrame({"image": [picture(np.full((500, 600, 3), 120, np.uint8))]})
    tiny = pd.DataFrame({"image": [picture(np.full((1, 1, 3), 120, np.uint8))]})
    found, none, small = (flavor.predict(model, f, spec) for f in (forest, blank, tiny))
    assert found[0, 9, 4] > none[0, :, 4].max()  # rows come best first
    assert (small[0, :, :4] >= 0).all() and (small[0, :, [2, 3]] <= 1).all()
    boxes = found[0][found[0, :, 4] > 0]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, :4].min() >= 0 and boxes[:, [0, 2]].max() <= 625  # clipped to the tile


def test_segmentation_paints_a_lone_item_with_its_class() -> None:
    """A canvas holding one test trouser: its inked pixels are mostly Trouser, the rest
    background; a blank canvas is all background."""
    spec, model = trained("fashion_segmentation")
    flavor = get_project("fashion_segmentation").FLAVOR
    items = load_source(CATALOG["fashion_cnn"].source)
    trouser = items[(items["split"] == "test") & (items["label"] == 1)]["image"].iloc[0]
    canvas = np.zeros((64, 64), np.uint8)
    canvas[2:30, 34:62] = np.frombuffer(trouser, np.uint8).reshape(28, 28)
    frame = pd.DataFrame({"image": [canvas.tobytes(), bytes(64 * 64)]})
    masks = flavor.predict(model, frame, spec).argmax(axis=1)
    inked = canvas >= 32
    assert (masks[0][inked] == 2).mean() > 0.8  # mask value 2: Trouser (class 1) + 1
    assert (masks[0][~inked] == 0).mean() > 0.95 and (masks[1] == 0).all()
