"""The inference line's shedding (ModelService.infer / admit) on a slow stand-in workload:
a batch that waited past SERVE_QUEUE_TIMEOUT_S is not run, one that would is refused on
arrival, one whose answer would come past the timeout is shed, and a batch the timeout took
out of line leaves the count as it found it."""

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from contract.catalog import load_catalog
from services.api.errors import OverCapacity
from services.api.inputs import encodes_text
from services.api.service import ModelService, line_budget
from services.api.telemetry import ServiceMetrics


def line(queue_timeout_s: float, timeout_s: float = 10.0) -> Any:
    """A ModelService with only what its inference line uses."""
    service = ModelService.__new__(ModelService)
    service.settings = SimpleNamespace(  # type: ignore[assignment]
        queue_timeout_s=queue_timeout_s, timeout_s=timeout_s, inference_threads=1
    )
    service.spec = SimpleNamespace(key="tree_detection")  # type: ignore[assignment]
    service.metrics = ServiceMetrics("detection")
    service.inline_max_records, service.line_budget_s = 0, queue_timeout_s
    service._inference = None
    service._line, service._waiting, service._run_s = threading.Lock(), 0, 0.0
    return service


async def burst(service: Any, n: int, seconds: float) -> list[str]:
    """n one-record batches at once, each `seconds` of work: what became of each."""

    async def one() -> str:
        try:
            await service.infer(time.sleep, 1, seconds)
            return "ran"
        except OverCapacity as exc:
            if "past the service's timeout" in str(exc):
                return "late"
            return "on arrival" if "batches wait" in str(exc) else "in line"
        except TimeoutError:
            return "timeout"

    return await asyncio.gather(*(one() for _ in range(n)))


def test_a_line_longer_than_the_budget_sheds_and_the_first_runs() -> None:
    service = line(queue_timeout_s=0.05)
    outcomes = asyncio.run(burst(service, 5, 0.1))
    assert outcomes[0] == "ran" and outcomes.count("in line") == 4, outcomes
    assert service._waiting == 0 and service._run_s > 0
    # the line now knows a batch's cost: with one waiting, a newcomer is refused on arrival
    outcomes = asyncio.run(burst(service, 4, 0.1))
    assert outcomes[0] == "ran" and "on arrival" in outcomes, outcomes
    assert service._waiting == 0


def test_a_batch_whose_answer_would_come_past_the_timeout_is_shed_not_run() -> None:
    """A budget near the timeout (a recording's 5 s of 10): the second batch waited 0.2 s of
    its 0.45, but two of the line's 0.2 s runs would end past the 0.5 s timeout. Run, it
    would have ended in time and the third would have been a 504."""
    service = line(queue_timeout_s=0.45, timeout_s=0.5)
    outcomes = asyncio.run(burst(service, 3, 0.2))
    assert outcomes == ["ran", "late", "late"], outcomes
    assert service._waiting == 0 and service._run_s == pytest.approx(0.2, abs=0.1)


def test_a_batch_that_finds_the_line_free_runs_however_slow_the_last_run_was() -> None:
    """A run longer than half the timeout (a cold start) must not shed every later batch:
    one arriving at a free line runs, and the line's average learns from it."""
    service = line(queue_timeout_s=0.45, timeout_s=0.5)
    assert asyncio.run(burst(service, 1, 0.3)) == ["ran"]  # 2 x 0.3 s > 0.5 s from now on
    assert asyncio.run(burst(service, 1, 0.05)) == ["ran"]
    assert service._run_s < 0.3


@pytest.mark.parametrize("seconds", [0.3])
def test_batches_the_timeout_took_out_of_line_leave_no_count(seconds: float) -> None:
    service = line(queue_timeout_s=0, timeout_s=0.1)  # no shedding: only the timeout
    outcomes = asyncio.run(burst(service, 3, seconds))
    assert outcomes == ["timeout"] * 3
    time.sleep(seconds * 2)  # the running one ends; the others never run
    assert service._waiting == 0


def test_a_model_slower_than_the_line_waits_up_to_its_objective() -> None:
    """The line's budget is SERVE_QUEUE_TIMEOUT_S, or the p99 objective where longer: a
    recording (5 s objective, most of a second to transcribe) may wait behind another."""
    catalog = load_catalog()
    assert line_budget(catalog["titanic"], 0.25) == 0.25  # 50 ms objective
    assert line_budget(catalog["tree_detection"], 0.25) == 0.25  # 250 ms
    assert line_budget(catalog["speech_to_text"], 0.25) == 5.0
    assert line_budget(catalog["speech_to_text"], 0) == 0  # 0: never shed, whatever the model


def test_a_transformers_reviews_never_run_on_the_event_loop() -> None:
    catalog = load_catalog()
    assert encodes_text(catalog["review_sentiment_transformer"])
    assert not encodes_text(catalog["review_sentiment"])  # TF-IDF: microseconds a review
    assert not any(encodes_text(spec) for key, spec in catalog.items() if "transformer" not in key)
