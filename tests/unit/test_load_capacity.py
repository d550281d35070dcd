"""The rated capacity's arithmetic and verdicts (services/tools/load/capacity.py) on
synthetic steps."""

import json
import math

import pytest

from contract.catalog import load_catalog
from services.tools.deploy import CAPACITY, DEFAULT_HPA_RPS, hpa_targets
from services.tools.load.capacity import (
    Step,
    answer_cost_ms,
    judge,
    judge_overload,
    markdown,
    objectives,
    overload_bounds,
    pacing,
    per_core,
    published,
    rated,
)
from services.tools.load.payloads import share

FAST = {"titanic": 50.0, "tree_detection": 250.0}  # two models' p99 objectives, ms


def step(rate: float, p99: float = 20.0, failures: int = 0, achieved: float | None = None,
         **statuses: int) -> Step:  # fmt: skip
    """A 20 s step: both models of FAST at p99 `p99` ms (the detector 4x that), each with
    the samples a p99 needs."""
    models = {
        "titanic": {"requests": 600, "p99_ms": p99},
        "tree_detection": {"requests": 600, "p99_ms": p99 * 4},
    }
    return Step(
        rate=rate, users=13, user_rate=rate / 13, seconds=20,
        achieved=rate if achieved is None else achieved, requests=int(rate * 20),
        failures=failures, p50_ms=p99 / 4, p95_ms=p99 / 2, p99_ms=p99, max_ms=p99 * 2,
        statuses={"200": int(rate * 20), **{k.replace("_", " "): v for k, v in statuses.items()}},
        models=models,
    )  # fmt: skip


def test_pacing_offers_the_rate_with_a_whole_number_of_users_per_model() -> None:
    users, per_user = pacing(500, [1.0] * 13)
    assert users % 13 == 0 and users * per_user == 500
    assert per_user <= 4.0  # a user never paced faster than 250 ms apart
    assert pacing(10, [1.0] * 13) == (13, 10 / 13)  # at least one user per model


def test_pacing_gives_each_model_its_catalog_share_of_the_rate() -> None:
    mix = [1.0] * 12 + [0.1]  # a detector asked a tenth as often
    users, per_user = pacing(500, mix)
    per_model = users // len(mix)
    offered = [per_model * per_user * s for s in mix]
    assert users % len(mix) == 0 and sum(offered) == pytest.approx(500)
    assert offered[-1] == pytest.approx(offered[0] / 10)
    assert per_user <= 4.0
    catalog = load_catalog()
    assert share(catalog["tree_detection"]) == 0.1 and share(catalog["titanic"]) == 1.0
    assert share(catalog["fashion_segmentation"]) == 1.0  # 64x64 grey canvases, not photos
    # the costly readers: a transformer's review ~25 TF-IDF ones, a recording ~8 tiles
    assert share(catalog["review_sentiment_transformer"]) == 0.1
    assert share(catalog["review_sentiment"]) == 1.0 and share(catalog["speech_to_text"]) == 0.01


def test_a_step_passes_only_fast_complete_and_without_failures() -> None:
    assert judge(step(300), FAST) == []  # the detector's 80 ms is within its 250
    assert judge(step(300, p99=80), FAST) == [
        "titanic p99 80 ms > 50 ms",
        "tree_detection p99 320 ms > 250 ms",
    ]
    assert "2 failed requests" in judge(step(300, failures=2), FAST)[0]
    # the closed loop's trap: a slow stack answers fewer requests than were offered
    assert judge(step(300, achieved=250), FAST) == ["achieved 250 req/s of 300 offered"]
    few = step(300, p99=80)
    few.models["titanic"]["requests"] = 499  # too few for a p99: one stall would decide it
    assert judge(few, FAST) == ["tree_detection p99 320 ms > 250 ms"]


def test_each_model_is_held_to_its_catalog_objective() -> None:
    catalog = load_catalog()
    assert objectives() == {key: spec.slo.p99_ms for key, spec in catalog.items()}
    assert objectives()["titanic"] == 50 and objectives()["tree_detection"] == 250
    assert set(objectives(80).values()) == {80}  # --p99-ms: one target for all


def test_a_rate_short_of_the_offer_by_chance_alone_still_passes() -> None:
    assert judge(step(50, achieved=47), FAST) == []  # 1,000 +- 32 Poisson arrivals in 20 s
    assert judge(step(50, achieved=44), FAST) == ["achieved 44 req/s of 50 offered"]
    assert judge(step(600, achieved=545), FAST) == []  # 10% of a large rate
    assert judge(step(600, achieved=535), FAST) == ["achieved 535 req/s of 600 offered"]


def test_the_rating_is_the_last_pass_before_the_first_failure() -> None:
    steps = [step(100), step(200), step(300, p99=70), step(400)]
    for s in steps:
        s.passed = not judge(s, FAST)
    assert rated(steps) == 200  # a lucky pass past the knee does not count
    failing = step(100, p99=90)
    failing.passed = not judge(failing, FAST)
    assert rated([failing]) == 0


def test_overload_must_shed_fast_and_say_when_to_retry() -> None:
    shed = step(900, p99=300, failures=400, **{"503": 400, "503 with Retry-After": 400})
    assert judge_overload(shed, 1000) == []
    slow = step(900, p99=700)  # max 1400 ms
    assert judge_overload(slow, 1000) == ["the slowest answer took 1400 ms > 1000 ms"]
    slow.models["titanic"]["max_ms"] = 1400
    assert judge_overload(slow, 1000, FAST) == ["titanic's slowest answer took 1400 ms > 1000 ms"]
    # a model slower than the mix: 8 of its objectives (the detector: 2 s)
    slow.models["titanic"]["max_ms"], slow.models["tree_detection"]["max_ms"] = 900, 1400
    assert judge_overload(slow, 1000, FAST) == []
    slow.models["tree_detection"]["max_ms"] = slow.max_ms = 2100
    assert judge_overload(slow, 1000, FAST) == [
        "tree_detection's slowest answer took 2100 ms > 2000 ms"
    ]
    # on a slow machine the bound follows what an answer cost the service's CPU in the run:
    # the detector's 2 cores over 4 answered requests/s (1 of 5 shed) is 500 ms an answer
    slow.models["tree_detection"].update(rps=5.0, error_ratio=0.2)
    slow.cpu = {"tree_detection": 2.0}
    assert answer_cost_ms(slow, "tree_detection") == pytest.approx(500)
    assert answer_cost_ms(slow, "titanic") == 0.0  # its CPU not measured
    assert overload_bounds(1000, FAST, slow) == {"titanic": 1000, "tree_detection": 4000}
    assert overload_bounds(1000, FAST) == {"titanic": 1000, "tree_detection": 2000}
    assert judge_overload(slow, 1000, FAST) == []
    slow.models["tree_detection"]["max_ms"] = 4100  # a line that should have shed
    assert judge_overload(slow, 1000, FAST) == [
        "tree_detection's slowest answer took 4100 ms > 4000 ms"
    ]
    broken = step(900, **{"502": 3, "429": 5, "429 without Retry-After": 5})
    assert judge_overload(broken, 1000) == [
        "answers that are not sheds: {'502': 3}",
        "5 429s without Retry-After",
    ]


def test_the_report_names_the_rating_and_every_step() -> None:
    steps = [step(100), step(200, p99=70)]
    for s in steps:
        s.why = judge(s, FAST)
        s.passed = not s.why
    confirm = step(100)
    confirm.models = {
        "titanic": {"rps": 7.7, "p50_ms": 3, "p99_ms": 12, "max_ms": 30, "failures": 0}
    }
    result = {
        "rated": 100, "objectives_ms": FAST | {"penguins": 50.0}, "models": 13,
        "steps": [vars(s) for s in steps], "confirm": vars(confirm), "overload": None,
    }  # fmt: skip
    text = markdown(result)
    assert "Rated: **100 requests/s**" in text and "8 per model of share 1" in text
    assert "objective (50 ms; tree_detection 250 ms)" in text
    assert "| 200 | 200 |" in text and "titanic p99 70 ms > 50 ms" in text
    assert "| titanic | 7.7 | 3 | 12 | 30 | 0 |" in text
    confirm.cpu = {"titanic": 0.077, "proxy": 0.2}
    assert per_core(confirm) == {"titanic": {"cpu_ms": 10.0, "rps_per_core": 100}}
    rating = published(result)
    assert rating["p99_ms"] == 50 and rating["objectives_ms"] == {"tree_detection": 250}


def test_the_published_rating_covers_every_model_and_sets_its_hpa() -> None:
    """infra/deploy/capacity.json is a measurement (make load --publish), kept consistent:
    every catalog model has its CPU per request and an HPA target derived from it."""
    rating = json.loads(CAPACITY.read_text())
    assert rating["rated_rps"] > 0 and rating["p99_ms"] == 50
    assert 0 < rating["busy_share"] <= 1
    # models added after the rating are listed, each with why, and get the default target
    unrated = rating.get("not_rated", {})
    assert set(rating["models"]) | set(unrated) == set(load_catalog())
    assert not set(rating["models"]) & set(unrated) and all(unrated.values())
    for key, cost in rating["models"].items():
        assert cost["rps_per_core"] == round(1000 / cost["cpu_ms"]), key
        assert cost["hpa_rps"] == max(1, math.floor(cost["rps_per_core"] * rating["busy_share"]))
    assert hpa_targets() == {key: cost["hpa_rps"] for key, cost in rating["models"].items()} | {
        key: DEFAULT_HPA_RPS for key in unrated
    }
