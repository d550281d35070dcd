"""Run wrk (one thread, pinned to CPU 1) against a POST endpoint and read its summary."""

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("post.lua")
WRK_CPU = "1"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}  # wrk's latency units, in ms


class WrkError(RuntimeError):
    """wrk saw errors: non-2xx/3xx answers or socket errors; the numbers are not usable."""


@dataclass
class Point:
    """One wrk run: throughput and latency percentiles (ms)."""

    connections: int
    seconds: float
    requests: int
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def parse(output: str, connections: int, seconds: float) -> Point:
    """The numbers of `wrk --latency` output; errors are counted, not raised."""
    percentiles = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    latency_max = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    total = re.search(r"^\s+(\d+) requests in", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if not (len(percentiles) == 4 and latency_max and total and rps):
        raise WrkError(f"cannot read wrk's output:\n{output}")
    errors: dict[str, int] = {}
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sockets:
        for name, count in zip(
            ("connect", "read", "write", "timeout"), sockets.groups(), strict=True
        ):
            if int(count):
                errors[name] = int(count)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors["non_2xx"] = int(non_2xx.group(1))
    return Point(
        connections=connections,
        seconds=seconds,
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_ms(percentiles["50"]),
        p75_ms=_ms(percentiles["75"]),
        p90_ms=_ms(percentiles["90"]),
        p99_ms=_ms(percentiles["99"]),
        max_ms=_ms(latency_max.group(1)),
        errors=errors,
    )


def run(url: str, body: Path, connections: int, seconds: float) -> Point:
    """`wrk -t1 -c N -d S --latency` on CPU 1, POSTing `body`; WrkError if any request failed."""
    duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds only
    command = [
        *("taskset", "-c", WRK_CPU, "wrk", "-t1", f"-c{connections}", duration),
        *("--timeout", "5s", "--latency", "-s", str(SCRIPT), url),
    ]
    env = os.environ | {"WRK_BODY": str(body)}
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    if done.returncode != 0:
        raise WrkError(f"wrk exited with {done.returncode}: {done.stdout}{done.stderr}".strip())
    point = parse(done.stdout, connections, seconds)
    if point.errors:
        raise WrkError(f"{url} at {connections} connections: {point.errors}\n{done.stdout}")
    if point.requests == 0:  # every request outlasted the run: no rate to report, not a zero
        raise WrkError(f"{url} at {connections} connections: no request completed in {duration}")
    return point
