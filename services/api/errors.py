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
    """A batch that waited in the inference line past its budget, or that would: shed, not
    run (503)."""

    def __init__(self, waited_s: float, budget_s: float, ahead: int = 0) -> None:
        if ahead:  # refused on arrival: the work already in line would outlast the budget
            told = f"{ahead} batches wait for inference, ~{waited_s * 1000:.0f} ms of work"
        else:
            told = f"the request waited {waited_s * 1000:.0f} ms for inference"
        super().__init__(
            f"over capacity: {told}, more than the line's budget ({budget_s:g} s: "
            "SERVE_QUEUE_TIMEOUT_S, or the model's p99 objective where longer): retry"
        )


class TooLate(OverCapacity):
    """A batch whose answer would come past the service's timeout as the line runs now:
    shed, not run into a 504 (a 503, as any OverCapacity)."""

    def __init__(self, waited_s: float, run_s: float, timeout_s: float) -> None:
        RuntimeError.__init__(
            self,
            f"over capacity: the request waited {waited_s * 1000:.0f} ms for inference and a "
            f"batch runs ~{run_s * 1000:.0f} ms now: its answer would come past the service's "
            f"timeout ({timeout_s:g} s): retry",
        )
