"""Client mistakes as exceptions: the app turns them into 4xx answers naming the field."""

from typing import Any


class InputError(ValueError):
    """A client mistake: HTTP status, and the fields it concerns."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def field_error(status: int, field: str, error: str, expected: Any = None) -> InputError:
    entry = {"field": field, "error": error} | ({"expected": expected} if expected else {})
    return InputError(status, f"{field}: {error}", [entry])


class OverCapacity(RuntimeError):
    """A batch that waited in the inference line past its budget, or that would, or whose
    run would end past the service's timeout: shed, not run (503)."""

    def __init__(
        self,
        waited_s: float,
        budget_s: float,
        ahead: int = 0,
        late: tuple[float, float] | None = None,
    ) -> None:
        if late:  # (a batch's run time lately, the service's timeout)
            run_s, timeout_s = late
            super().__init__(
                f"over capacity: the request waited {waited_s * 1000:.0f} ms for inference and "
                f"a batch runs ~{run_s * 1000:.0f} ms now: its answer would come past the "
                f"service's timeout ({timeout_s:g} s): retry"
            )
            return
        if ahead:  # refused on arrival: the work already in line would outlast the budget
            told = f"{ahead} batches wait for inference, ~{waited_s * 1000:.0f} ms of work"
        else:
            told = f"the request waited {waited_s * 1000:.0f} ms for inference"
        super().__init__(
            f"over capacity: {told}, more than the line's budget ({budget_s:g} s: "
            "SERVE_QUEUE_TIMEOUT_S, or the model's p99 objective where longer): retry"
        )
