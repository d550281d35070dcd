"""Large batches wait in line for the worker's inference thread; small ones run on the loop;
one still waiting at the timeout is cancelled, never run for a client that got its 504."""

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contract.catalog import get_spec
from services.api.service import ModelService
from services.api.settings import ServeSettings


def service(tmp_path: Path, **settings: Any) -> ModelService:
    options: dict[str, Any] = {"prediction_log": "off", "cache_dir": tmp_path}
    return ModelService(get_spec("titanic"), ServeSettings(model="titanic", **options | settings))


def test_small_batches_run_on_the_loop_large_ones_in_line(tmp_path: Path) -> None:
    model = service(tmp_path)
    running, most = 0, 0
    guard = threading.Lock()

    def work(name: str) -> str:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return f"{name} in {threading.current_thread().name}"

    async def main() -> tuple[str, list[str]]:
        small = await model.infer(work, 16, "small")
        large = await asyncio.gather(*(model.infer(work, 1000, f"b{i}") for i in range(4)))
        return small, large

    try:
        small, large = asyncio.run(main())
    finally:
        model.stop_inference()
    assert small == f"small in {threading.main_thread().name}"
    assert all(" in inference" in answer for answer in large), large
    assert most == 1  # one after the other: never two batches on one core at once


def test_a_batch_still_in_line_at_the_timeout_is_never_run(tmp_path: Path) -> None:
    model = service(tmp_path, timeout_s=0.2)
    ran: list[str] = []

    def work(name: str) -> None:
        ran.append(name)
        time.sleep(0.5)

    async def main() -> list[object]:
        calls = (model.infer(work, 1000, name) for name in ("first", "queued"))
        return await asyncio.gather(*calls, return_exceptions=True)

    try:
        outcomes = asyncio.run(main())
        time.sleep(0.6)  # the first batch's thread finishes its work
    finally:
        model.stop_inference()
    assert [type(o) for o in outcomes] == [TimeoutError, TimeoutError]
    assert ran == ["first"]


def test_inference_threads_is_a_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inference_threads"):
        ServeSettings(model="titanic", inference_threads=0)
    assert service(tmp_path, inference_threads=2).settings.inference_threads == 2
