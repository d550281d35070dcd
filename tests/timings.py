"""What each part of `make test` cost: a step's wall time, a tier's test time, the slowest tests.

`python -m tests.timings step NAME -- CMD...` runs one step of `make test` (lint, the fast lane,
the slow lane) and records its wall time; `python -m tests.timings report` prints the table
that ends every `.ci/run`. The pytest plugin (`Recorder`, registered by tests/conftest.py)
writes each test's seconds by phase for the report where TEST_TIMINGS_DIR is set. Standard
library only: it runs before and after the environment's heavy imports matter.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

DIR_VARIABLE = "TEST_TIMINGS_DIR"
STEPS = "steps.jsonl"
SLOWEST = 10


class Recorder:
    """A pytest plugin: every test's seconds by phase and its outcome, one JSON file a lane."""

    def __init__(self, folder: Path, lane: str) -> None:
        self.path = folder / f"{lane}.json"
        self.tests: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        test = self.tests.setdefault(report.nodeid, {"outcome": "passed"})
        test[report.when] = test.get(report.when, 0.0) + report.duration
        if report.failed or (report.skipped and report.when != "teardown"):
            test["outcome"] = "failed" if report.failed else "skipped"

    def pytest_sessionfinish(self, session: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.tests))


def register(config: Any) -> None:
    """Add the recorder to a pytest run where TEST_TIMINGS_DIR names a folder."""
    folder = os.environ.get(DIR_VARIABLE)
    # not in an xdist worker: its reports reach the controller, which records them
    if folder and not hasattr(config, "workerinput"):
        lane = os.environ.get("TEST_TIMINGS_LANE", "pytest")
        config.pluginmanager.register(Recorder(Path(folder), lane), "timings-recorder")


def tier(nodeid: str) -> str:
    """tests/<tier>/... -> <tier>; a test module at the top level is its own tier."""
    parts = nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 else parts[-1]


def group(nodeid: str) -> str:
    """A test without its parameters: the eighteen models of a generic test are one row."""
    return re.sub(r"\[.*\]$", "[*]", nodeid)


def seconds(test: dict[str, Any]) -> float:
    return float(sum(test.get(phase, 0.0) for phase in ("setup", "call", "teardown")))


def report(folder: Path) -> str:
    """The steps' wall times, each tier's test time and the ten slowest tests (grouped)."""
    lines = ["", "## What this run cost", "", "| step | wall time |", "|---|---:|"]
    steps = folder / STEPS
    for line in steps.read_text().splitlines() if steps.exists() else []:
        step = json.loads(line)
        lines.append(f"| {step['step']} (rc {step['rc']}) | {step['seconds']:,.0f} s |")
    tests: dict[str, dict[str, Any]] = {}
    for lane in sorted(folder.glob("*.json")):
        tests |= json.loads(lane.read_text())
    tiers: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for nodeid, test in tests.items():
        row = tiers[tier(nodeid)]
        row[0] += 1
        row[1] += test["outcome"] == "passed"
        row[2] += seconds(test)
    lines += ["", "| tier | tests | passed | test time |", "|---|---:|---:|---:|"]
    for name, (count, passed, spent) in sorted(tiers.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"| {name} | {count:.0f} | {passed:.0f} | {spent:,.0f} s |")
    groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for nodeid, test in tests.items():
        row = groups[group(nodeid)]
        row[0] += 1
        row[1] += seconds(test)
        row[2] += test.get("setup", 0.0)
    lines += ["", f"| the {SLOWEST} slowest tests | runs | seconds | of which set-up |"]
    lines.append("|---|---:|---:|---:|")
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][1])[:SLOWEST]
    for name, (count, spent, setup) in ranked:
        lines.append(f"| {name} | {count:.0f} | {spent:,.1f} | {setup:,.1f} |")
    lines.append("")
    lines.append("Test time adds up each test's set-up, call and teardown; a lane run in")
    lines.append("parallel (the fast lane, pytest-xdist) spends more test time than wall time.")
    return "\n".join(lines)


def step(folder: Path, name: str, command: list[str]) -> int:
    """Run one step of `make test`, record its wall time; on failure the table so far."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    env = os.environ | {DIR_VARIABLE: str(folder.resolve()), "TEST_TIMINGS_LANE": name}
    rc = subprocess.call(command, env=env)
    record = {"step": name, "seconds": time.monotonic() - start, "rc": rc}
    with (folder / STEPS).open("a") as out:
        out.write(json.dumps(record) + "\n")
    if rc != 0:
        print(report(folder), flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.timings", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".ci/timings"))
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("step", help="run a step of make test and record its wall time")
    run.add_argument("name")
    run.add_argument("command", nargs=argparse.REMAINDER)
    verbs.add_parser("report", help="print the table of the steps recorded in --dir")
    verbs.add_parser("reset", help="forget the steps recorded in --dir")
    args = parser.parse_args(argv)
    if args.verb == "step":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("step needs a command after --")
        return step(args.dir, args.name, command)
    if args.verb == "reset":
        for path in [args.dir / STEPS, *args.dir.glob("*.json")]:
            path.unlink(missing_ok=True)
        return 0
    print(report(args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
