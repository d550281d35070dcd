"""`make loop-demo`: the closed loop on titanic, every part real. The world shifts, the served
model gets worse on the outcomes that come back, the performance alert retrains it on the
labelled production records, and the new version goes out as a canary that is promoted; a
second, deliberately broken candidate is rolled back by its outcomes.

    python -m services.tools.loop_demo [--workspace DIR] [--folder DIR]

The shift (`SHIFTS`) is a documented transformation of the held-out split: a new booking
system numbers the classes from the bottom (pclass 1 is steerage, 3 is first class). Every
record stays valid, the drift report sees pclass move, and the model, which learned that
first class survives, now ranks the passengers wrongly. The held-out split is cut, seeded,
into production traffic (55%: served and labelled through /feedback before the retraining:
what it may learn from, whose newest share the gate holds out) and two parts of canary
traffic, one per canary, each served and labelled after the version it judges was trained.

1. before: held-out passengers as they were, served; the demo scores the answers itself
   (no feedback, so that the drift service and the snapshot see the shifted world only);
2. the shift: the production part shifted, served, its outcomes sent to /feedback; the
   drift service's performance run scores the champion under its floor and
   ModelPerformanceDegraded fires (ModelDriftDetected too);
3. Alertmanager -> the drift service's webhook -> a retraining job: snapshot@titanic takes
   the labelled records, train appends them (production.join), the gate compares the
   candidate with the champion on the newest ones, never trained on (production window),
   and, passed, the version becomes @challenger (production.rollout: canary);
4. the canary: the drift service ramps it in (DRIFT_CANARY_STEPS); the demo sends the first
   canary part, one passenger a request (X-Unit-ID), with outcomes until it is promoted;
5. a broken candidate: the workspace's titanic entry gets `BROKEN` params by mistake (no
   tree can split: the same answer for everyone) and is retrained; the gate refuses it (a floor
   missed), an operator pushes it out as a canary all the same, and the canary, on the
   second canary part, rolls it back on outcomes (CanaryRolledBack fires). The entry is
   restored.

By default the workspace is a copy of this checkout under the demo's folder, with its own
registry (trained there first: titanic alone), so the checkout and its registry are left
as they were; `--workspace` names a trained DVC project to use instead (the tests' reduced
one). The timings are the demo's (rules `for:` 5 s, canary steps of DRIFT_CANARY_STEP_S),
not production's. The numbers land in <folder>/loop-demo.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import yaml

from contract import paths
from contract.catalog import ModelSpec, get_spec
from contract.paths import ROOT
from services.api import auth
from services.drift.retrain import ACTIVE
from services.tools.drift_demo import alert_state, job_of, stack, wait_for
from services.tools.examples import as_records

TIMEOUT_S = 900
PERFORMANCE_ALERT, ROLLBACK_ALERT = "ModelPerformanceDegraded", "CanaryRolledBack"
# of the held-out split: served and labelled before the retraining; the rest is cut in two,
# one part for each canary (what one canary served and labelled, the next retraining learns)
PRODUCTION_SHARE = 0.55
# the deliberate mistake of the second run: leaves of 100,000 passengers, so no tree can
# split and every passenger gets the same answer
BROKEN = {"max_iter": 1, "min_samples_leaf": 100_000}
# canary traffic: requests (one passenger each) per second; a part of the split holds ~60
# passengers, so a step of 20 s sees each about three times per arm
CANARY_BATCH = 20


def flip_classes(frame: pd.DataFrame) -> pd.DataFrame:
    """A new booking system numbers the classes from the bottom: 1 <-> 3."""
    out = frame.copy()
    out["pclass"] = out["pclass"].map({1: 3, 2: 2, 3: 1})
    return out


SHIFTS: dict[str, tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]] = {
    "titanic": ("pclass numbered from the bottom (1 <-> 3)", flip_classes),
}


def say(message: str, since: float | None = None) -> None:
    clock = f"+{time.monotonic() - since:6.1f}s " if since is not None else ""
    print(f"[loop-demo {time.strftime('%H:%M:%S')}] {clock}{message}", flush=True)


class Loop:
    """The running stack, as the demo talks to it."""

    def __init__(
        self, spec: ModelSpec, urls: dict[str, str], headers: dict[str, str], feedback: str
    ) -> None:
        self.spec, self.urls, self.headers = spec, urls, headers
        self.feedback_headers = {"Authorization": f"Bearer {feedback}"}
        self.http = httpx.Client(timeout=30)

    def predict(self, records: list[dict[str, Any]], unit: str | None = None) -> dict[str, Any]:
        headers = {"X-Unit-ID": unit} if unit else {}
        url = f"{self.urls['model']}/predict"
        answer = self.http.post(url, json={"records": records}, headers=headers)
        answer.raise_for_status()
        return dict(answer.json())

    def label(self, answer: dict[str, Any], outcomes: list[Any]) -> None:
        sent = [{"request_id": answer["request_id"], "position": i, "outcome": o}
                for i, o in enumerate(outcomes)]  # fmt: skip
        url = f"{self.urls['model']}/feedback"
        response = self.http.post(url, json={"outcomes": sent}, headers=self.feedback_headers)
        response.raise_for_status()

    def drift(self, method: str, path: str) -> Any:
        response = self.http.request(method, f"{self.urls['drift']}{path}", headers=self.headers)
        response.raise_for_status()
        return response.json()

    def champion_now(self) -> dict[str, Any] | None:
        """The champion's live performance (a run now), if it has a metric yet."""
        versions = self.drift("POST", f"/models/{self.spec.key}/performance/run")["versions"]
        found = [v for v in versions if v["alias"] == "champion" and v["metrics"]]
        return found[0] if found else None

    def job(self, after: set[str]) -> dict[str, Any] | None:
        jobs = [j for j in self.drift("GET", "/retraining") if j["model"] == self.spec.key]
        new = [j for j in jobs if j["id"] not in after]
        return new[0] if new else None

    def idle(self) -> bool:
        """No job of the model's is queued or running."""
        jobs = self.drift("GET", "/retraining")
        return not any(j["model"] == self.spec.key and j["state"] in ACTIVE for j in jobs)

    def finished(self, job_id: str) -> dict[str, Any] | None:
        """The job once it has ended (None while it is queued or running)."""
        return job_of((self.urls["drift"], self.headers), self.spec.key, True, job_id)

    def canary(self) -> dict[str, Any]:
        return dict(self.drift("GET", f"/models/{self.spec.key}/canary"))


def metric_of(spec: ModelSpec, answers: list[dict[str, Any]], outcomes: list[Any]) -> float:
    """The gate metric of served answers against the true outcomes (the task's own)."""
    return spec.task_kind.performance(spec, answers, outcomes)[spec.gate_metric]


def canary_round(loop: Loop, rows: pd.DataFrame, outcomes: list[Any], seed: int) -> tuple[int, int]:
    """CANARY_BATCH passengers of the canary part, one request each (its own unit), with
    their outcomes: (records the challenger answered, the champion answered)."""
    picked = rows.sample(CANARY_BATCH, replace=True, random_state=seed)
    records = as_records(picked, loop.spec)
    counts = {"champion": 0, "challenger": 0}
    for record, index in zip(records, picked.index, strict=True):
        answer = loop.predict([record], unit=f"passenger-{uuid.uuid4().hex[:12]}")
        loop.label(answer, [outcomes[index]])
        counts[answer["alias"]] = counts.get(answer["alias"], 0) + 1
    return counts["challenger"], counts["champion"]


def run_canary(
    loop: Loop, rows: pd.DataFrame, outcomes: list[Any], deadline: float, t0: float
) -> dict[str, Any]:
    """Canary traffic until the canary under way is promoted or rolled back."""
    seed, shown, sent = 100, 0, {"challenger": 0, "champion": 0}
    while time.monotonic() < deadline:
        state = loop.canary()
        looks = state.get("looks", [])
        for look in looks[shown:]:
            checks = "; ".join(
                f"{n}: {c['verdict']} ({c['text']})" for n, c in look["checks"].items()
            )
            say(f"   look at step {look['step'] + 1} ({look['share']:.0%} of units): {checks}", t0)
        shown = len(looks)
        if state.get("state") in ("promoted", "rolled_back"):
            return state
        started = time.monotonic()
        ours, theirs = canary_round(loop, rows, outcomes, seed)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        seed, sent["challenger"], sent["champion"] = (
            seed + 1,
            sent["challenger"] + ours,
            sent["champion"] + theirs,
        )
        if seed % 5 == 0:
            say(f"   canary traffic so far: {sent['challenger']} records to the challenger, "
                f"{sent['champion']} to the champion, with their outcomes", t0)  # fmt: skip
    raise TimeoutError("the canary did not finish")


def demo(spec: ModelSpec, workspace: Path, folder: Path, steps: str, step_s: float) -> int:
    description, transform = SHIFTS[spec.key]
    test = pd.read_parquet(paths.split_dir(spec.key, workspace) / "test.parquet")
    test = test.sample(frac=1.0, random_state=7).reset_index(drop=True)  # seeded halves
    cut = round(len(test) * PRODUCTION_SHARE)
    second = cut + (len(test) - cut) // 2
    production = transform(test.iloc[:cut])
    first_rows = transform(test.iloc[cut:second]).reset_index(drop=True)
    second_rows = transform(test.iloc[second:]).reset_index(drop=True)
    task = spec.task_kind
    truth = task.true_outcomes(test, spec)
    feedback_token = auth.local_token(folder / "secrets" / "feedback-token")
    model_env = {"SERVE_FEEDBACK_TOKEN_FILE": str(folder / "secrets" / "feedback-token"),
                 "SERVE_RELOAD_INTERVAL_S": "1"}  # fmt: skip
    drift_env = {
        "DRIFT_PERFORMANCE_MIN_RECORDS": "50",
        "DRIFT_PROMETHEUS_URL": "{prometheus}",
        "DRIFT_CANARY_STEPS": steps,
        "DRIFT_CANARY_STEP_S": str(step_s),
        "DRIFT_CANARY_TICK_S": "1",
        "DRIFT_CANARY_RECORDS": "200",
        "DRIFT_CANARY_MIN_RECORDS": "40",
        "DRIFT_CANARY_LATENCY_P99_S": "0.25",  # one record a request on a loaded 2-core box
    }
    numbers: dict[str, Any] = {"shift": description}
    with stack(spec.key, workspace, folder, model_env, drift_env) as (urls, headers):
        loop = Loop(spec, urls, headers, feedback_token)
        t0, deadline = time.monotonic(), time.monotonic() + TIMEOUT_S
        key = spec.key

        say(f"1. before: {len(test)} held-out passengers as they were -> {key}", t0)
        answer = loop.predict(as_records(test, spec))
        numbers["before"] = metric_of(spec, answer["predictions"], truth)
        say(
            f"   {spec.gate_metric} {numbers['before']:.4f} (v{answer['version']}, scored here)", t0
        )

        say(f"2. the shift: {description}; {len(production)} passengers served, labelled", t0)
        answer = loop.predict(as_records(production, spec))
        loop.label(answer, truth[:cut])
        found = wait_for("a performance run", loop.champion_now, deadline)
        numbers["after_shift"] = found["metrics"][spec.gate_metric]
        numbers["champion"] = found["version"]
        registered = found["registered"].get(spec.gate_metric, float("nan"))
        say(f"   drift service: v{found['version']} {spec.gate_metric} "
            f"{numbers['after_shift']:.4f} on {found['records']} labelled records "
            f"(registered {registered:.4f})", t0)  # fmt: skip
        watch(urls["prometheus"], key, PERFORMANCE_ALERT, deadline, t0)

        say("3. Alertmanager -> webhook -> retraining on the labelled production records", t0)
        job = wait_for("the retraining job", lambda: loop.job(set()), deadline)
        say(f"   job {job['id']}: {job['command']}", t0)
        done = wait_for("its end", lambda: loop.finished(job["id"]), deadline, 2)
        say(f"   job {done['state']}: v{done['version']} -> @{done['alias']}: {done['gate']}", t0)
        record = json.loads(paths.registry_record(key, workspace).read_text())
        window = record["production_window"]
        numbers["retrained"] = window["metrics"].get(spec.gate_metric)
        numbers["window_champion"] = window["champion"]
        numbers["window_records"] = window["records"]
        numbers["production_rows"] = record["production_rows"]
        numbers["gate"] = done["gate"]
        if done["state"] != "canary":
            say(f"FAILED: the retrained version was not rolled out ({done['state']})", t0)
            return 1

        say(f"4. the canary: v{done['version']} ramps in ({steps}, {step_s:g} s a step)", t0)
        finished = run_canary(loop, first_rows, truth[cut:second], deadline, t0)
        say(f"   canary {finished['state']}: {finished['reason']}", t0)
        numbers["canary"] = _arms(finished)
        if finished["state"] != "promoted":
            say("FAILED: the retrained version's canary was not promoted", t0)
            return 1

        say(f"5. a broken candidate: the entry's params with {BROKEN} by mistake", t0)
        # the promotion's drift alerts may have queued a retraining of the entry as it is:
        # it ends first (a request now would join it), then the broken one is the next job
        wait_for("the model's retraining jobs to end", loop.idle, deadline, 2)
        with misconfigured(workspace, key, BROKEN):
            job = loop.drift("POST", f"/models/{key}/retrain")["job"]
            bad = wait_for("its end", lambda: loop.finished(job["id"]), deadline, 2)
        say(f"   job {bad['state']}: v{bad['version']} -> @{bad['alias']}: {bad['gate']}", t0)
        if bad["state"] == "challenger":  # the gate refused it: pushed out by hand all the same
            loop.drift("POST", f"/models/{key}/canary")
            say("   an operator starts it as a canary anyway (POST /models/<key>/canary)", t0)
        rolled = run_canary(loop, second_rows, truth[second:], deadline, t0)
        say(f"   canary {rolled['state']}: {rolled['reason']}", t0)
        numbers["broken"] = _arms(rolled)
        if rolled["state"] != "rolled_back":  # no alert to wait for: said, and done
            say("FAILED: the broken candidate was not rolled back", t0)
            return 1
        watch(urls["prometheus"], key, ROLLBACK_ALERT, deadline, t0)

        summary = folder / "loop-demo.json"
        summary.write_text(json.dumps(numbers, indent=2) + "\n")
        say(f"numbers ({summary}):", t0)
        say(f"   {spec.gate_metric} before the shift {numbers['before']:.4f}; after it "
            f"{numbers['after_shift']:.4f} (v{numbers['champion']}); retrained, on the "
            f"{numbers['window_records']} newest labelled records, never trained on: "
            f"{numbers['retrained']:.4f} against the old champion's "
            f"{numbers['window_champion']:.4f}", t0)  # fmt: skip
        for name in ("canary", "broken"):
            ours, theirs = numbers[name]["challenger"], numbers[name]["champion"]
            say(f"   {name} ({numbers[name]['state']}): v{ours['version']} {ours['value']:.4f} "
                f"against v{theirs['version']} {theirs['value']:.4f} on canary traffic "
                "never trained on", t0)  # fmt: skip
        return 0


def watch(prometheus: str, model: str, alert: str, deadline: float, t0: float) -> None:
    """Until `alert` fires for `model`, saying each state it passes through."""
    state = "inactive"
    while state != "firing":
        state = wait_for(alert, _changed(prometheus, model, alert, state), deadline)
        say(f"   Prometheus: {alert}{{model={model}}} is {state}", t0)


def _changed(prometheus: str, model: str, alert: str, previous: str) -> Callable[[], str | None]:
    def check() -> str | None:
        state = alert_state(prometheus, model, alert)
        return state if state != previous else None

    return check


def _arms(canary: dict[str, Any]) -> dict[str, Any]:
    """The last look's outcome comparison of a finished canary."""
    looks = canary.get("looks") or [{}]
    outcome = looks[-1].get("checks", {}).get("outcomes", {})
    found = outcome.get("comparison", {})
    return {"state": canary["state"], "reason": canary["reason"],
            "challenger": found.get("challenger"), "champion": found.get("champion")}  # fmt: skip


class misconfigured:
    """The workspace's catalog entry with `params` over its own, restored on exit."""

    def __init__(self, workspace: Path, key: str, params: dict[str, Any]) -> None:
        self.path, self.key, self.params = workspace / "params.yaml", key, params
        self.saved = self.path.read_text()

    def __enter__(self) -> None:
        params = yaml.safe_load(self.saved)
        params["models"][self.key]["params"] |= self.params
        self.path.write_text(yaml.safe_dump(params, sort_keys=False))

    def __exit__(self, *exc: object) -> None:
        self.path.write_text(self.saved)


def copy_workspace(target: Path, key: str, env: dict[str, str]) -> Path:
    """This checkout's tracked files in `target`, a git repository of its own, with `key`
    trained and registered there (its own registry, an empty prediction log)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=loop-demo", "-c", "user.email=loop-demo@localhost"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=target, check=True)
    say(f"training {key} in {target} (its own registry): dvc repro register@{key}")
    here = Path(sys.executable).parent  # the stages run `python` by name: this environment's
    path = f"{here}{os.pathsep}{os.environ['PATH']}"
    subprocess.run(
        [str(here / "dvc"), "repro", f"register@{key}"], cwd=target,
        env=os.environ | env | {"PREDICTION_LOG": "off", "PATH": path}, check=True,
    )  # fmt: skip
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tools.loop_demo", description=__doc__)
    parser.add_argument("--model", default="titanic", choices=sorted(SHIFTS))
    parser.add_argument("--workspace", type=Path, help="a trained DVC project (default: a copy)")
    parser.add_argument("--folder", type=Path, default=ROOT / "run" / "loop-demo")
    parser.add_argument("--steps", default="[0.5]", help="DRIFT_CANARY_STEPS of the demo")
    parser.add_argument("--step-s", type=float, default=20.0, help="DRIFT_CANARY_STEP_S")
    args = parser.parse_args(argv)
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    try:
        if args.workspace is None:
            registry = args.folder / "workspace" / "mlruns"
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{registry / 'mlflow.db'}"
            os.environ["MLFLOW_ARTIFACT_ROOT"] = (registry / "artifacts").as_uri()
            (args.folder / "workspace").mkdir()
            workspace = copy_workspace(args.folder / "workspace", args.model, {})
        else:
            workspace = args.workspace.resolve()
        spec = get_spec(args.model, workspace / "params.yaml")
        return demo(spec, workspace, args.folder, args.steps, args.step_s)
    except TimeoutError as exc:
        say(f"FAILED: {exc} (logs in {args.folder})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
