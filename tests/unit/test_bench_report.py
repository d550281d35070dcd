"""make bench's targets and table from a run's numbers: the anchor column and its checks."""

import contextlib
from pathlib import Path
from typing import Any

import pytest

from services.tools.bench.report import Result, checks, markdown, median_interval, ratio, spread
from services.tools.bench.wrk import Point


def point(connections: int, rps: float) -> Point:
    return Point(connections, 10.0, int(rps * 10), rps, 1.0, 1.5, 2.0, 4.0, 9.0)


def run(lean: float, anchor: float, rows: float, anchor_rows: float) -> list[Result]:
    return [
        Result("titanic", "floor", 1, [point(16, 10_000), point(64, 10_000)]),
        Result("titanic", "anchor", 1, [point(16, anchor), point(64, anchor)]),
        Result("titanic", "lean", 1, [point(16, lean), point(64, lean)]),
        Result("titanic", "anchor", 1000, [point(4, anchor_rows / 1000)]),
        Result("titanic", "lean", 1000, [point(4, rows / 1000)]),
    ]


def verdicts(results: list[Result]) -> dict[str, bool]:
    return {c.name: c.passed for c in checks(results, ["titanic"], ["titanic"])}


def test_the_service_must_be_at_least_as_fast_as_the_anchor() -> None:
    faster = verdicts(run(lean=8_000, anchor=7_000, rows=120_000, anchor_rows=110_000))
    assert faster[">= 1x the hand-written anchor's req/s"]
    assert faster["1000-row batch >= 1x the anchor's rows/s"]
    slower = verdicts(run(lean=6_000, anchor=7_000, rows=90_000, anchor_rows=110_000))
    assert not slower[">= 1x the hand-written anchor's req/s"]
    assert not slower["1000-row batch >= 1x the anchor's rows/s"]
    assert not slower["1000-row batch >= 100,000 rows/s"]


def test_the_table_shows_each_server_as_a_share_of_the_floor_and_the_anchor() -> None:
    results = run(lean=8_000, anchor=7_000, rows=120_000, anchor_rows=100_000)
    found = checks(results, ["titanic"], ["titanic"])
    info = {"date": "d", "cpu_model": "c", "nproc": 2, "pinning": "p", "duration_s": 10,
            "load_before": "0", "load_after": "0"}  # fmt: skip
    table = markdown(results, found, info)
    assert "| titanic | lean | 16 | 8,000 | 1.00 | 4.00 | 80% | 114% |" in table
    assert "| titanic | lean | 4 | 120,000 | 1.00 | 4.00 |  | 120% |" in table


def test_a_compared_point_is_the_median_round_whole() -> None:
    from services.tools.bench.__main__ import median_point

    rounds = [point(16, 5_000), point(16, 9_000), point(16, 7_000)]
    rounds[2].p99_ms = 3.25  # the median round's own latency, not another round's
    chosen = median_point(rounds)
    assert (chosen.rps, chosen.p99_ms) == (7_000, 3.25)
    assert median_point([point(16, 4_000)]).rps == 4_000


def test_runs_are_long_enough_for_a_hundred_requests_of_the_slowest() -> None:
    from services.tools.bench.__main__ import MAX_RUN_S, run_seconds

    assert run_seconds(5.0, [5_000.0, 4_000.0]) == 5.0  # single records: plenty
    assert run_seconds(5.0, [14.0, 15.0]) == 8.0  # 1000-review batches: ceil(100 / 14)
    assert run_seconds(5.0, [3.0, 2.9]) == MAX_RUN_S  # energy_forecast's: capped
    assert run_seconds(5.0, []) == 5.0


def test_ratios_pair_the_rounds_of_one_comparison() -> None:
    """Servers measured in the same rounds compare round by round (the median of the rounds'
    ratios): a busy round counts once for both, whichever server's median round it was."""
    anchor = Result("semantic_search", "anchor", 1, [point(1, 116)], compared=1)
    lean = Result("semantic_search", "lean", 1, [point(1, 108)], compared=1)
    anchor.rounds[1] = [121, 122, 101, 107, 116]
    lean.rounds[1] = [117, 123, 102, 108, 107]
    paired = ratio(lean, anchor, 1)
    assert paired == 123 / 122  # rounds 0.97, 1.01, 1.01, 1.01, 0.92: not 108 / 116 = 0.93
    assert verdict_pairs(lean, anchor)
    alone = Result("semantic_search", "mlflow", 1, [point(1, 50)])  # another comparison
    alone.rounds[1] = [50.0]
    assert ratio(lean, alone, 1) == 108 / 50
    lean.compared = 2  # not the same rounds: the points
    assert ratio(lean, anchor, 1) == 108 / 116
    lean.compared, lean.rounds[1] = 1, [117, 123]  # in two rounds: those two pair
    assert ratio(lean, anchor, 1) == (117 / 121 + 123 / 122) / 2
    assert ratio(lean, Result("x", "anchor", 1), 1) is None


def verdict_pairs(lean: Result, anchor: Result) -> bool:
    floor = Result(lean.model, "floor", 1, [point(1, 5_000)], compared=lean.compared)
    floor.rounds[1] = [5_000.0] * len(lean.rounds[1])
    found = checks([floor, anchor, lean], [lean.model], [])
    return next(c.passed for c in found if c.name == ">= 1x the hand-written anchor's req/s")


def test_the_spread_of_the_rounds_is_their_middle_half_over_the_median() -> None:
    assert spread([1.0, 1.1, 0.9]) == 0.0  # three rounds: too few to tell
    assert spread([0.9, 1.0, 1.0, 1.0, 1.1]) == 0.0  # one round off each way: the middle half
    assert round(spread([0.8, 0.9, 1.0, 1.1, 1.2]), 6) == 0.2
    lean = Result("titanic", "lean", 1, [point(16, 100)], compared=1)
    anchor = Result("titanic", "anchor", 1, [point(16, 100)], compared=1)
    lean.rounds[16], anchor.rounds[16] = [90, 100, 100, 100, 110], [100.0] * 5
    found = checks([anchor, lean], ["titanic"], [])
    measured = next(c.measured for c in found if c.name.startswith(">= 1x"))
    assert measured == "1.00 (16 conn; rounds 1.00-1.00)"


def test_the_median_ratio_carries_its_confidence_interval() -> None:
    """Order statistics: 95% needs six rounds ([min, max]); fourteen give the 3rd and 12th."""
    assert median_interval([1.0] * 5) is None
    assert median_interval([0.9, 1.2, 1.0, 0.95, 1.05, 1.1]) == (0.9, 1.2)
    assert median_interval([0.9, 1.2, 1.0, 0.95, 1.05, 1.1, 1.0]) == (0.9, 1.2)
    fourteen = [0.90 + i / 100 for i in range(14)]
    assert median_interval(fourteen) == (fourteen[2], fourteen[11])
    lean = Result("titanic", "lean", 1, [point(16, 100)], compared=1)
    anchor = Result("titanic", "anchor", 1, [point(16, 100)], compared=1)
    lean.rounds[16] = [93.0, 95, 97, 98, 99, 101, 105]
    anchor.rounds[16] = [100.0] * 7
    found = checks([anchor, lean], ["titanic"], [])
    check = next(c for c in found if c.name.startswith(">= 1x"))
    # under 1.0x, but the rounds cannot tell it from 1.0x: level with the anchor
    assert (
        check.measured
        == "0.98 (16 conn; rounds 0.96-1.00; 95% CI 0.93-1.05; level within the noise)"
    )
    assert check.passed
    lean.rounds[16] = [93.0, 95, 96, 97, 97, 98, 99]  # every round under: slower
    check = next(c for c in checks([anchor, lean], ["titanic"], []) if c.name.startswith(">= 1x"))
    assert check.measured == "0.97 (16 conn; rounds 0.95-0.97; 95% CI 0.93-0.99)"
    assert not check.passed
    # against mlflow (another graph and server), a ratio is judged as measured
    mlflow = Result("titanic", "mlflow", 1, [point(16, 100)], compared=1)
    mlflow.rounds[16] = [100.0] * 7
    lean.rounds[16] = [93.0, 95, 97, 98, 99, 101, 105]
    found = checks([anchor, mlflow, lean], ["titanic"], [])
    assert not next(c for c in found if c.name.startswith(">= 3x")).passed


def test_a_comparison_runs_the_floor_briefly_and_a_noisy_pair_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The schedule: the floor in the first FLOOR_ROUNDS rounds, the anchor and the service in
    every round, back to back at each count, the order reversed every other round; a pair
    whose rounds' ratios spread past NOISY runs as many rounds again, and one whose median
    ratio is under 1.0x with a confidence interval reaching it, up to MORE_ROUNDS sets."""
    from services.tools.bench import __main__ as bench_main

    played: list[tuple[str, int]] = []
    rates = {"floor": [1000.0], "anchor": [100.0], "lean": [100.0, 80.0, 120.0, 100.0]}

    def run(url: str, body: Path, count: int, seconds: float) -> Point:
        name = url.split("/")[2]
        played.append((name, count))
        series = rates[name]
        return point(count, series[len(played) % len(series)])

    monkeypatch.setattr(bench_main.wrk, "run", run)
    monkeypatch.setattr(bench_main.servers, "check_post", lambda url, body: None)
    body = tmp_path / "body.json"
    body.write_text("{}")

    def starter(name: str) -> Any:
        return lambda: contextlib.nullcontext(f"http://{name}")

    def compare(lean_rates: list[float], rounds: int = 4) -> list[tuple[str, int]]:
        rates["lean"] = lean_rates
        played.clear()
        bench = bench_main.Bench(3.0, 1.0, tmp_path, rounds=rounds)
        trio = [(Result("titanic", n, 1), starter(n)) for n in ("floor", "anchor", "lean")]
        bench.compare(trio, "/predict", body, (16, 64), brief=1)
        return played[3:]  # after the warm-ups

    steady = compare([100.0])
    floor_runs = [r for r in steady if r[0] == "floor"]
    assert floor_runs == [("floor", 16), ("floor", 64)] * bench_main.FLOOR_ROUNDS
    first = [("floor", 16), ("anchor", 16), ("lean", 16), ("floor", 64), ("anchor", 64),
             ("lean", 64)]  # fmt: skip
    assert steady[:6] == first
    second = [("lean", 16), ("anchor", 16), ("floor", 16), ("lean", 64), ("anchor", 64),
              ("floor", 64)]  # fmt: skip
    assert steady[6:12] == second
    assert len(steady) == 3 * 3 * 2 + 1 * 2 * 2  # three rounds of three, one of two
    extra_set = [("anchor", 16), ("lean", 16), ("anchor", 64), ("lean", 64),
                 ("lean", 16), ("anchor", 16), ("lean", 64), ("anchor", 64)] * 2  # fmt: skip
    noisy = compare([100.0, 140.0, 180.0])  # spread past NOISY, but faster: one more set
    assert noisy[: len(steady)] == steady
    assert noisy[len(steady) :] == extra_set
    # under 1.0x with an interval that reaches it (six rounds or more): up to MORE_ROUNDS sets
    six = compare([100.0], rounds=6)
    level = compare([92.0, 99.0, 103.0], rounds=6)
    assert level[: len(six)] == six
    lean_runs = [r for r in level if r[0] == "lean"]
    assert len(lean_runs) == 2 * 6 * bench_main.MORE_ROUNDS  # two counts, 18 rounds


def test_the_precision_table_shows_a_gpu_run_where_one_was_made(tmp_path: Path) -> None:
    """A model measured on a lent GPU machine (reports/bench/gpu/<key>.json) gets its measured
    rows, the drop against that run's own FP32; the others say why they have none."""
    import json

    from services.tools.bench import precision

    key = "review_sentiment_transformer"
    run = {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "rows": [
        {"precision": "float32", "roc_auc": 0.9030, "p50_ms": 3.77, "p99_ms": 4.87,
         "batch_rows_s": 3458.8},
        {"precision": "float16", "roc_auc": 0.9025, "p50_ms": 4.71, "p99_ms": 74.48,
         "batch_rows_s": 3705.6},
    ]}  # fmt: skip
    (tmp_path / f"{key}.json").write_text(json.dumps(run))
    rows = precision.gpu_rows(key, tmp_path, "roc_auc")
    assert len(rows) == 2 and all("NVIDIA H200" in r and "no TensorRT" in r for r in rows)
    assert "| FP16 |" in rows[1] and "3,706" in rows[1] and "roc_auc 0.9025 | +0.0005 |" in rows[1]
    assert precision.gpu_rows("fashion_cnn", tmp_path, "accuracy") == []


def test_the_precision_table_says_which_graph_is_served() -> None:
    """A shipped INT8 graph is the one served (its row "yes", FP32's "no (INT8 is)"); one
    over its allowed drop is not, and has no timings (export did not keep it)."""
    from services.tools.bench import precision

    report = {"metric": "accuracy", "fp32": 0.9139, "int8": 0.9141, "drop": -0.0002}
    refused = precision.served_column(report | {"shipped": False})
    assert refused == ("yes", "no (over the allowed drop)")
    assert precision.served_column(report | {"shipped": True}) == ("no (INT8 is)", "yes")
    info = {"date": "today", "cpu_model": "a CPU", "packages": {"onnxruntime": "1.0"}}
    found = [
        {"model": "fashion_cnn", "precision": "FP32", "device": "CPU (ONNX Runtime)",
         "metric": "accuracy", "value": 0.9139, "drop": 0.0, "served": "no (INT8 is)",
         "p50_ms": 0.2, "p99_ms": 0.3, "batch_rows_s": 4000.0, "mib": 1.6},
        {"model": "fashion_cnn", "precision": "INT8", "device": "CPU (ONNX Runtime)",
         "metric": "accuracy", "value": 0.9141, "drop": -0.0002, "served": "yes"},
    ]  # fmt: skip
    table = precision.markdown(found, info, "no GPU")
    assert "| accuracy 0.9139 | +0.0000 | no (INT8 is) |" in table
    assert (
        "| fashion_cnn | INT8 | CPU (ONNX Runtime) | | | | | accuracy 0.9141 | -0.0002 | yes |"
        in table
    )
