"""The stack's rated capacity: the highest offered request rate at which p99 <= 50 ms with no
error, found by a step ramp of paced Locust runs; then that rate held (the rating's proof)
and an overload run above it (the shedding's proof). What `make load` runs.

    python -m services.tools.load.capacity                         # ramp, confirm, overload
    python -m services.tools.load.capacity --start 100 --step 100 --step-time 20s
    python -m services.tools.load.capacity --confirm-only 400      # hold 400 req/s: pass or not
    python -m services.tools.load.capacity --overload-only 600     # 600 req/s: does it shed well?
    python -m services.tools.load.capacity --publish               # and write capacity.json

Each step is one headless Locust run (services/tools/load/locustfile.py) whose users are paced
(`--user-rate`): N users at R/N requests/s each offer R requests/s whatever the answers'
times, an open loop rather than a closed one that slows down with the stack. The traffic is
the locustfile's mix (a user class per model: one record 8, a batch of 10 records 2, entity
keys 2 where Feast serves the model, a malformed body 1), each model's users paced at its
share of the rate of a model of share 1 (services/tools/load/payloads.py: a photo service's
and a transformer classifier's are a tenth, a speech service's a hundredth).
Statistics start once every user runs (--reset-stats). A step passes when every model's p99
is within its objective (its catalog slo.p99_ms, or --p99-ms), no request failed (a shed
429/503 is a failure here) and the rate achieved is within 10% of the rate offered
(shortfall). The ramp stops after the first failing step past the last passing one (--past
steps more for the plot's knee).

The overload run offers --overload x the rated rate and passes when the stack sheds rather
than queues: no answer slower than --overload-max-ms, no 5xx other than 503, no refused
connection, and every 429/503 says when to retry (Retry-After).

Locust runs on the same machine as the stack and takes CPU from it: each step records the
cores Locust used and, for the local stack (run/stack.json), every process's: a model
service's CPU milliseconds per request give its requests/s per core, the scaling rule the
k8s HPA targets use. Writes reports/load/capacity.{json,md,png} and each run's own Locust
reports under reports/load/capacity/. --publish also writes infra/deploy/capacity.json, the
rating `make manifests` turns into each model's HPA target: its requests/s per core times the
share of the machine's CPU that was busy at the rated rate (the utilisation at which p99 was
still <= 50 ms), so that a pod scales out before its tail does.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.catalog import load_catalog
from contract.paths import ROOT
from services.tools.deploy import CAPACITY as PUBLISHED
from services.tools.load.__main__ import DEFAULT_HOST, LOCUSTFILE
from services.tools.load.payloads import share
from services.tools.load.slo import MIN_SAMPLES

# the slowest answer under overload, in p99 objectives, for a model whose objective x this
# exceeds --overload-max-ms (the detector and the segmentation: 8 x 250 ms)
OVERLOAD_OBJECTIVES = 8
MAX_USER_RATE = 4.0  # requests/s per user: a pause of 250 ms, well above the 50 ms target
WARMUP_S = 3  # every user started, before the statistics are reset
SHED_CODES = {"429", "503"}
FAILED_CODES = {"0", "500", "502", "504"}  # no answer, or the proxy / a service failing


@dataclass
class Step:
    """One paced run: what was offered, what came back."""

    rate: float  # offered, requests/s
    users: int
    user_rate: float
    seconds: float
    achieved: float = 0.0
    requests: int = 0
    failures: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    locust_cpu: float = 0.0  # cores Locust itself used
    cpu: dict[str, float] = field(default_factory=dict)  # cores each stack process used
    statuses: dict[str, int] = field(default_factory=dict)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    passed: bool = False
    why: list[str] = field(default_factory=list)


def shares() -> list[float]:
    """Each catalog model's share of the paced mix (payloads.share), in catalog order."""
    return [share(spec) for spec in load_catalog().values()]


def pacing(rate: float, share: list[float]) -> tuple[int, float]:
    """(users, requests/s of a user of share 1) that offer `rate`: as many users per model
    (a model's users each send its share of that rate), none faster than MAX_USER_RATE."""
    per_model = max(1, math.ceil(rate / sum(share) / MAX_USER_RATE))
    return per_model * len(share), rate / (per_model * sum(share))


def objectives(p99_ms: float | None = None) -> dict[str, float]:
    """Each model's p99 latency objective, ms: its catalog entry's `slo` (50 ms unless it
    says otherwise: a detector's tiles take longer than a table row), or `p99_ms` for all."""
    return {key: p99_ms or spec.slo.p99_ms for key, spec in load_catalog().items()}


def usual(objective: dict[str, float]) -> float:
    """The objective most models have."""
    values = list(objective.values())
    return max(set(values), key=values.count)


def shortfall(step: Step) -> float:
    """How far below the offered rate a run may fall and still have offered it: 10% (Locust's
    rate over a 20 s step, users starting at random, was 8% short at 100 requests/s on a
    quiet stack), or three standard deviations of its Poisson count where that is more (20 s
    at 50 requests/s: 1,000 +- 32 arrivals). A stack that cannot keep up fails its latency
    objectives first."""
    seconds = max(step.seconds, 1)
    return max(0.10 * step.rate, 3 * math.sqrt(step.rate * seconds) / seconds)


def judge(step: Step, objective: dict[str, float]) -> list[str]:
    """Why a ramp step fails its rating (empty: it passes). A model's p99 is judged where it
    has the samples to define one (services/tools/load/slo.py: 500)."""
    why = []
    if step.requests == 0:
        why.append("no request was answered")
    for key, limit in sorted(objective.items()):
        measured = step.models.get(key, {})
        if measured.get("requests", 0) >= MIN_SAMPLES["p99_ms"] and measured["p99_ms"] > limit:
            why.append(f"{key} p99 {measured['p99_ms']:.0f} ms > {limit:g} ms")
    if step.failures:
        codes = {c: n for c, n in step.statuses.items() if c != "200" and c != "400"}
        why.append(f"{step.failures} failed requests {codes}")
    if step.achieved < step.rate - shortfall(step):
        why.append(f"achieved {step.achieved:.0f} req/s of {step.rate:.0f} offered")
    return why


def answer_cost_ms(step: Step, key: str) -> float:
    """What one answered request of `key` cost its service's CPU in this run, ms: the cores
    it used over the requests it answered (a shed costs next to nothing, so the sheds are
    left out; per_core divides by every request, as the HPA targets count them). 0 where the
    run did not measure the service's CPU."""
    measured, cores = step.models.get(key, {}), step.cpu.get(key)
    answered = measured.get("rps", 0.0) * (1 - measured.get("error_ratio", 0.0))
    return cores / answered * 1000 if cores and answered else 0.0


def overload_bounds(
    max_ms: float, objective: dict[str, float], step: Step | None = None
) -> dict[str, float]:
    """Each model's slowest answer allowed under overload: `max_ms`, or OVERLOAD_OBJECTIVES
    of its p99 objective or of what an answer cost its CPU in this run (answer_cost_ms),
    whichever is longer. A detector's tile, 44-75 ms of a core alone, takes most of a second
    itself on a CPU oversubscribed twice; on a machine where each answer costs more CPU than
    the objective allows for (the 2-core AVX2-only EPYC: the detector's answers 2.1 s there),
    the bound follows the machine, not the objective. A wait in a line that should have shed
    still fails: the bound is a few answers' cost, not a queue's."""
    return {
        key: max(
            max_ms,
            OVERLOAD_OBJECTIVES * max(ms, answer_cost_ms(step, key) if step else 0.0),
        )
        for key, ms in objective.items()
    }


def judge_overload(
    step: Step, max_ms: float, objective: dict[str, float] | None = None
) -> list[str]:
    """Why an overload run did not shed as it should (empty: it did): every answer within
    `max_ms`, a model slower than the mix within its own bound (overload_bounds, from this
    run's CPU per answer where it measured it)."""
    why = []
    bounds = overload_bounds(max_ms, objective or {}, step)
    for key, measured in sorted(step.models.items()):
        slowest, bound = measured.get("max_ms", 0.0), bounds.get(key, max_ms)
        if slowest > bound:
            why.append(f"{key}'s slowest answer took {slowest:.0f} ms > {bound:g} ms")
    if not any("max_ms" in m for m in step.models.values()) and step.max_ms > max_ms:
        why.append(f"the slowest answer took {step.max_ms:.0f} ms > {max_ms:g} ms")
    failed = {c: n for c, n in step.statuses.items() if c in FAILED_CODES}
    if failed:
        why.append(f"answers that are not sheds: {failed}")
    for code in SHED_CODES:
        if step.statuses.get(f"{code} without Retry-After"):
            why.append(
                f"{step.statuses[f'{code} without Retry-After']} {code}s without Retry-After"
            )
    if step.requests == 0:
        why.append("no request was answered")
    return why


def per_core(step: Step) -> dict[str, dict[str, float]]:
    """Each model service's CPU per request in this run and the requests/s one core of it
    serves (at 100% busy: the HPA targets take a share of it)."""
    rule = {}
    for key, measured in step.models.items():
        cores, rps = step.cpu.get(key), measured["rps"]
        if cores and rps:
            cpu_ms = round(cores / rps * 1000, 3)  # the rate from the published figure
            rule[key] = {"cpu_ms": cpu_ms, "rps_per_core": round(1000 / cpu_ms)}
    return rule


def busy_share(step: Step) -> float:
    """The share of the machine's cores the stack and Locust kept busy during the run."""
    return min(1.0, (sum(step.cpu.values()) + step.locust_cpu) / (os.cpu_count() or 1))


def published(result: dict[str, Any]) -> dict[str, Any]:
    """What infra/deploy/capacity.json keeps: the rating and each model's HPA target."""
    confirm = Step(**result["confirm"])
    share = round(busy_share(confirm), 2)  # as published: the targets follow from it
    return {
        "measured_by": "python -m services.tools.load.capacity --publish (make load)",
        "machine": f"{os.cpu_count()} cores, the local stack and Locust together",
        # the p99 objective of most models, and those of the others (their catalog `slo`)
        "p99_ms": usual(result["objectives_ms"]),
        "objectives_ms": {
            key: ms
            for key, ms in result["objectives_ms"].items()
            if ms != usual(result["objectives_ms"])
        },
        "rated_rps": result["rated"],
        "busy_share": share,
        "models": {
            key: {**cost, "hpa_rps": max(1, math.floor(cost["rps_per_core"] * share))}
            for key, cost in per_core(confirm).items()
        },
    }


def rated(steps: list[Step]) -> float:
    """The highest passing rate below the first failing one (0: none passed)."""
    best = 0.0
    for step in sorted(steps, key=lambda s: s.rate):
        if not step.passed:
            break
        best = step.rate
    return best


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stack_processes() -> dict[str, int]:
    """The local stack's processes by name (run/stack.json), where that stack is up."""
    state = Path(os.environ.get("STACK_RUN_DIR", ROOT / "run")) / "stack.json"
    if not state.exists():
        return {}
    return {p["name"]: p["pid"] for p in json.loads(state.read_text())}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time so far of each process and its children (workers), by name."""
    import psutil

    seconds = {}
    for name, pid in pids.items():
        try:
            process = psutil.Process(pid)
            family = [process, *process.children(recursive=True)]
            seconds[name] = sum(p.cpu_times().user + p.cpu_times().system for p in family)
        except psutil.Error:  # gone: nothing to count
            continue
    return seconds


def run_step(args: argparse.Namespace, rate: float, seconds: int, name: str) -> Step:
    """One paced Locust run at `rate`, its report in reports/load/capacity/<name>/."""
    users, user_rate = pacing(rate, shares())
    loosest = max(objectives(args.p99_ms).values())  # Locust's own check; judge() is per model
    out = Path(args.out) / "capacity" / name
    out.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", args.host, "--data-root", str(Path(args.data_root).resolve()),
        "--users", str(users), "--spawn-rate", str(users),
        "--run-time", f"{seconds + WARMUP_S}s", "--reset-stats", "--stop-timeout", "5",
        "--user-rate", f"{user_rate:.6f}",
        "--slo-error-ratio", "0",
        "--slo-p95-ms", str(loosest), "--slo-p99-ms", str(loosest),
        "--slo-report", str(out / "slo.json"), "--csv", str(out / "locust"),
        "--html", str(out / "locust.html"),
    ]  # fmt: skip
    pids = stack_processes()
    before, stack_before = _cpu(), cpu_seconds(pids)
    (out / "slo.json").unlink(missing_ok=True)  # an earlier run's must not pass for this one
    run = subprocess.run(
        command, cwd=ROOT, check=False, capture_output=True, text=True, timeout=seconds + 120
    )
    if not (out / "slo.json").exists():
        raise RuntimeError(f"Locust wrote no report (exit {run.returncode}):\n{run.stderr[-3000:]}")
    elapsed = seconds + WARMUP_S
    cpu = (_cpu() - before) / elapsed
    stack_after = cpu_seconds(pids)
    stack_cpu = {  # a child that exited in the run (a retraining job) takes its time along
        name: round(max(0.0, stack_after[name] - stack_before[name]) / elapsed, 3)
        for name in stack_after
        if name in stack_before
    }
    report = json.loads((out / "slo.json").read_text())
    total = report["results"]["total"]
    return Step(
        rate=rate,
        users=users,
        user_rate=user_rate,
        seconds=seconds,
        achieved=total["rps"],
        requests=int(total["requests"]),
        failures=int(total["failures"]),
        p50_ms=total["p50_ms"],
        p95_ms=total["p95_ms"],
        p99_ms=total["p99_ms"],
        max_ms=total["max_ms"],
        locust_cpu=round(cpu, 2),
        cpu=stack_cpu,
        statuses=report["statuses"],
        models=report["models"],
    )


def _judged(step: Step, why: list[str], label: str) -> None:
    """Give the step its verdict and print it."""
    step.why, step.passed = why, not why
    _show(step, label)


def _show(step: Step, label: str) -> None:
    verdict = "pass" if step.passed else "FAIL: " + "; ".join(step.why)
    print(
        f"{label} {step.rate:6.0f} req/s offered, {step.achieved:6.0f} achieved "
        f"({step.users} users): p50 {step.p50_ms:.0f} p99 {step.p99_ms:.0f} "
        f"max {step.max_ms:.0f} ms, "
        f"{step.failures} failed, Locust {step.locust_cpu:.2f} cores: {verdict}",
        flush=True,
    )


def ramp(args: argparse.Namespace) -> list[Step]:
    """The step ramp. A failing step is run once more and kept if the second run passes: a
    stall of the whole machine (every model's p99 at 600 ms in one 20 s step, none in the
    next) is not the stack's knee, which a second run finds again."""
    steps: list[Step] = []
    rate, failing = float(args.start), 0
    while rate <= args.max_rate and failing <= args.past:
        for _ in range(2):
            step = run_step(args, rate, args.step_seconds, f"step-{rate:.0f}")
            _judged(step, judge(step, objectives(args.p99_ms)), "step")
            if step.passed:
                break
        steps.append(step)
        failing += not step.passed
        rate += args.step
    return steps


def plot(steps: list[Step], rating: float, objective: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s.rate for s in steps]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, values in (
        ("p50", [s.p50_ms for s in steps]),
        ("p95", [s.p95_ms for s in steps]),
        ("p99", [s.p99_ms for s in steps]),
    ):
        axis.plot(rates, values, marker="o", label=name)
    p99_ms = usual(objective)
    axis.axhline(p99_ms, color="red", linestyle="--", label=f"p99 objective {p99_ms:g} ms (most)")
    if rating:
        axis.axvline(rating, color="green", linestyle=":", label=f"rated {rating:.0f} req/s")
    failed = [s for s in steps if s.failures]
    if failed:
        axis.scatter([s.rate for s in failed], [s.p99_ms for s in failed], color="black",
                     marker="x", zorder=3, label="requests failed")  # fmt: skip
    axis.set_yscale("log")
    axis.set_xlabel("offered requests/s (all models, mixed traffic)")
    axis.set_ylabel("latency, ms (log)")
    axis.set_title("The local stack through the proxy: latency vs offered rate")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def described(objective: dict[str, float]) -> str:
    """`50 ms; tree_detection 250 ms`: the most common objective, then the others."""
    common = usual(objective)
    others = [f"{key} {ms:g} ms" for key, ms in sorted(objective.items()) if ms != common]
    return "; ".join([f"{common:g} ms", *others])


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Rated capacity (make load)",
        "",
        f"Rated: **{result['rated']:.0f} requests/s** in total with every model's p99 within "
        f"its objective ({described(result['objectives_ms'])}) and no error, "
        f"{result['rated'] / result.get('shares', result['models']):.0f} per model of share 1 "
        f"({result['models']} models, the locustfile's mix at each model's share, through "
        "the proxy).",
        "",
        "| offered req/s | achieved | users | p50 ms | p95 ms | p99 ms | max ms | failed "
        "| Locust cores | |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in map(lambda d: Step(**d), result["steps"]):
        verdict = "pass" if s.passed else "; ".join(s.why)
        lines.append(
            f"| {s.rate:.0f} | {s.achieved:.0f} | {s.users} | {s.p50_ms:.0f} | {s.p95_ms:.0f} "
            f"| {s.p99_ms:.0f} | {s.max_ms:.0f} | {s.failures} | {s.locust_cpu:.2f} | {verdict} |"
        )
    for title, key in (("At the rated rate", "confirm"), ("Overload", "overload")):
        if not result.get(key):
            continue
        s = Step(**result[key])
        verdict = "pass" if s.passed else "FAIL: " + "; ".join(s.why)
        lines += [
            "",
            f"## {title}: {s.rate:.0f} req/s offered for {s.seconds:.0f} s: {verdict}",
            "",
            f"{s.achieved:.0f} achieved, p50 {s.p50_ms:.0f} ms, p99 {s.p99_ms:.0f} ms, "
            f"max {s.max_ms:.0f} ms; answers by status: {s.statuses}",
            "",
            "| model | req/s | p50 ms | p99 ms | max ms | failed | CPU ms/request "
            "| req/s per core |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        rule = per_core(s)
        for key, m in s.models.items():
            cost = rule.get(key, {})
            lines.append(
                f"| {key} | {m['rps']:.1f} | {m['p50_ms']:.0f} | {m['p99_ms']:.0f} "
                f"| {m['max_ms']:.0f} | {m['failures']:.0f} | {cost.get('cpu_ms', '')} "
                f"| {cost.get('rps_per_core', '')} |"
            )
        others = {name: cores for name, cores in s.cpu.items() if name not in s.models}
        if others or s.locust_cpu:
            used = ", ".join(f"{name} {cores:.2f}" for name, cores in sorted(others.items()))
            lines += [
                "",
                f"Cores used besides the model services: Locust {s.locust_cpu:.2f}, {used}.",
            ]
    return "\n".join(lines) + "\n"


def seconds(text: str) -> int:
    units = {"s": 1, "m": 60}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.load.capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="the proxy (default: %(default)s)")
    parser.add_argument("--data-root", default=str(ROOT), help="where data/split/ is")
    parser.add_argument("--out", default=str(ROOT / "reports" / "load"))
    parser.add_argument(
        "--p99-ms", type=float, default=None,
        help="one p99 target for every model (default: each model's catalog slo.p99_ms)",
    )  # fmt: skip
    parser.add_argument("--start", type=float, default=50.0, help="first offered rate, req/s")
    parser.add_argument("--step", type=float, default=50.0, help="added per step, req/s")
    parser.add_argument("--max-rate", type=float, default=5000.0)
    parser.add_argument("--step-time", type=seconds, default=20, dest="step_seconds")
    parser.add_argument("--past", type=int, default=1, help="failing steps to run (the knee)")
    parser.add_argument("--confirm-time", type=seconds, default=60, dest="confirm_seconds")
    parser.add_argument("--confirm-only", type=float, default=0.0, help="hold this rate only")
    parser.add_argument("--overload", type=float, default=2.0, help="x the rated rate; 0: none")
    parser.add_argument("--overload-time", type=seconds, default=30, dest="overload_seconds")
    parser.add_argument("--overload-max-ms", type=float, default=1000.0)
    parser.add_argument("--overload-only", type=float, default=0.0, help="one overload run")
    parser.add_argument("--publish", action="store_true", help=f"write {PUBLISHED.name}")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = len(load_catalog())

    if args.overload_only:
        over = run_step(args, args.overload_only, args.overload_seconds, "overload")
        _judged(
            over, judge_overload(over, args.overload_max_ms, objectives(args.p99_ms)), "overload"
        )
        (out / "overload.json").write_text(json.dumps(asdict(over), indent=2) + "\n")
        return 0 if over.passed else 1
    steps = [] if args.confirm_only else ramp(args)
    rating = args.confirm_only or rated(steps)
    result: dict[str, Any] = {
        "host": args.host, "objectives_ms": objectives(args.p99_ms), "models": models,
        "shares": sum(shares()),
        "rated": rating,
        "steps": [asdict(s) for s in steps], "confirm": None, "overload": None,
    }  # fmt: skip
    ok = rating > 0
    if rating:
        # the rating must hold for longer than a step: where it does not (a ramp's lucky
        # step at the knee), the step below is tried, twice at most
        for _ in range(1 if args.confirm_only else 3):
            confirm = run_step(args, rating, args.confirm_seconds, "rated")
            _judged(confirm, judge(confirm, objectives(args.p99_ms)), "rated")
            if confirm.passed or rating - args.step < args.start:
                break
            rating -= args.step
        rating = result["rated"] = rating if confirm.passed else 0.0
        result["confirm"] = asdict(confirm)
        result["per_core"] = per_core(confirm)
        ok = ok and confirm.passed
        if args.overload:
            over = run_step(args, confirm.rate * args.overload, args.overload_seconds, "overload")
            _judged(
                over,
                judge_overload(over, args.overload_max_ms, objectives(args.p99_ms)),
                "overload",
            )
            result["overload"] = asdict(over)
            ok = ok and over.passed
    else:
        print(f"no step passed: not even {args.start:.0f} req/s within the p99 objectives")
    name = "capacity" if not args.confirm_only else "confirm"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    if steps:
        plot(steps, rating, result["objectives_ms"], out / f"{name}.png")
    if args.publish and ok:
        PUBLISHED.write_text(json.dumps(published(result), indent=2) + "\n")
        print(f"published {PUBLISHED.relative_to(ROOT)}: `make manifests` sets the HPA targets")
    print(
        f"rated capacity: {rating:.0f} req/s ({rating / result['shares']:.0f} per model of share 1)"
        f" -> {out}/{name}.md"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
