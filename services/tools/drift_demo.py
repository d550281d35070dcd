"""`make drift-demo`: shifted traffic for one model until its drift alert fires in Prometheus,
Alertmanager's webhook retrains it, and the registry shows what the quality gate decided.

    python -m services.tools.drift_demo [--model titanic] [--workspace DIR]

Every part is the real one, on free ports, with its files under run/drift-demo/: the model's
service (its own prediction log), the drift service (a run every 5 s), Prometheus with
infra/prometheus's rules and Alertmanager with infra/alertmanager's routes. For the demo only,
every rule's `for:` becomes 5 s, Alertmanager's group_wait 1 s, and Prometheus scrapes and
evaluates every second: the real values wait minutes on purpose. The workspace is the DVC
project the retraining runs in (its registry: MLFLOW_TRACKING_URI, or its mlruns/).
"""

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from contract import paths
from contract.audio import FULL_SCALE, SAMPLE_RATE, decode_recording
from contract.catalog import ModelSpec, get_spec
from contract.paths import ROOT
from contract.settings import get_settings
from services.api import auth
from services.tools import monitoring
from services.tools.examples import as_records
from services.tools.processes import Process, free_port, started

WINDOW = 300
TIMEOUT_S = 900
ALERT = "ModelDriftDetected"


def say(message: str, since: float | None = None) -> None:
    clock = f"+{time.monotonic() - since:5.1f}s " if since is not None else ""
    print(f"[drift-demo {time.strftime('%H:%M:%S')}] {clock}{message}", flush=True)


def shift(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Another population: numbers two spreads higher, one category for all, texts twice
    as long, images inverted, recordings 12 dB quieter; bounds of the catalog kept, so every
    record stays valid."""
    out = frame.copy()
    for name, field in spec.fields.items():
        values = out[name]
        if field.type in ("float", "int"):
            moved = values + 2 * (values.std() or 1.0)
            moved = moved.clip(lower=field.min, upper=field.max)
            out[name] = moved.round() if field.type == "int" else moved
        elif field.type == "category" and field.values:
            rarest = values.value_counts().reindex(field.values, fill_value=0).idxmin()
            out[name] = values.where(values.isna(), rarest)
        elif field.type == "text":
            out[name] = values.where(values.isna(), values.astype(str) + " " + values.astype(str))
        elif field.type == "image":
            out[name] = [bytes(255 - np.frombuffer(v, np.uint8)) for v in values]
        elif field.type == "photo":
            out[name] = [_inverted(v) for v in values]
        elif field.type == "audio":
            out[name] = [_quieter(v, (field.shape or [0])[0]) for v in values]
    return out


def _inverted(encoded: bytes) -> bytes:
    """A picture's colours inverted, as PNG."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(encoded)) as picture:
        buffer = io.BytesIO()
        ImageOps.invert(picture.convert("RGB")).save(buffer, format="PNG")
    return buffer.getvalue()


def _quieter(encoded: bytes, max_samples: int) -> bytes:
    """A recording at a quarter of its amplitude (12 dB down), as a 16 kHz mono 16-bit WAV."""
    samples = decode_recording(encoded, max_samples)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(np.round(samples * FULL_SCALE / 4).astype("<i2").tobytes())
    return buffer.getvalue()


def binary(*names: str) -> str:
    for name in names:
        if found := shutil.which(name):
            return found
    raise SystemExit(f"error: none of {names} is installed (make setup installs them)")


@contextlib.contextmanager
def stack(
    model: str,
    workspace: Path,
    folder: Path,
    model_env: dict[str, str] | None = None,
    drift_env: dict[str, str] | None = None,
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The four processes, ready; stopped on the way out. Yields their base URLs and the
    drift service's credential (an Authorization header); `model_env` and `drift_env` add
    to the services' settings ({prometheus} in a value: Prometheus's URL)."""
    ports = {name: free_port() for name in ("model", "drift", "prometheus", "am")}
    prometheus_url = f"http://127.0.0.1:{ports['prometheus']}"
    extra = {
        name: {k: v.replace("{prometheus}", prometheus_url) for k, v in (env or {}).items()}
        for name, env in (("model", model_env), ("drift", drift_env))
    }
    admin, webhook = folder / "secrets" / "admin-token", folder / "secrets" / "webhook-token"
    headers = {"Authorization": f"Bearer {auth.local_token(admin)}"}
    auth.local_token(webhook)
    log = f"sqlite:///{folder / 'predictions.sqlite'}"
    mapped = {
        monitoring.model_port(model): ports["model"],
        monitoring.DRIFT_PORT: ports["drift"],
        monitoring.ALERTMANAGER_PORT: ports["am"],
    }
    prometheus_file, alertmanager_file = monitoring.write(
        folder, mapped, ports["drift"], webhook, fast=True
    )
    python = sys.executable
    processes = [
        Process("model", [python, "-m", "services.serve", model, "--port", str(ports["model"])],
                ports["model"], "/readyz", {"SERVE_PREDICTION_LOG": log,
                                            "SERVE_FEATURE_ROOT": str(workspace),
                                            **extra["model"]}),
        Process("drift", [python, "-m", "services.drift", "--port", str(ports["drift"])],
                ports["drift"], "/readyz",
                {"DRIFT_PREDICTION_LOG": log, "DRIFT_MODELS": json.dumps([model]),
                 "DRIFT_SCHEDULE_S": "5", "DRIFT_WINDOW_ROWS": str(WINDOW),
                 "DRIFT_MIN_ROWS": str(WINDOW // 2), "DRIFT_STATE_DIR": str(folder / "drift"),
                 "DRIFT_WORKSPACE": str(workspace), "DRIFT_ADMIN_TOKEN_FILE": str(admin),
                 "DRIFT_WEBHOOK_TOKEN_FILE": str(webhook), **extra["drift"]}),
        Process("prometheus", [binary("prometheus"), f"--config.file={prometheus_file}",
                               f"--storage.tsdb.path={folder / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                ports["prometheus"], "/-/ready"),
        Process("alertmanager", [binary("prometheus-alertmanager", "alertmanager"),
                                 f"--config.file={alertmanager_file}",
                                 f"--storage.path={folder / 'alertmanager'}",
                                 f"--web.listen-address=127.0.0.1:{ports['am']}",
                                 "--cluster.listen-address="],
                ports["am"], "/-/ready"),
    ]  # fmt: skip
    with started(processes, folder / "logs", say) as urls:
        yield urls, headers


def traffic(spec: ModelSpec, workspace: Path, seed: int, shifted: bool) -> list[dict[str, Any]]:
    """WINDOW records drawn (seeded) from the training split, shifted or not."""
    train = pd.read_parquet(paths.split_dir(spec.key, workspace) / "train.parquet")
    rows = train.sample(WINDOW, replace=True, random_state=seed).reset_index(drop=True)
    return as_records(shift(spec, rows) if shifted else rows, spec)


def send(url: str, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), 50):
        response = httpx.post(url + "/predict", json={"records": records[start : start + 50]})
        response.raise_for_status()


def alert_state(prometheus: str, model: str, alert: str = ALERT) -> str:
    alerts = httpx.get(prometheus + "/api/v1/alerts").json()["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"].get("alertname") == alert
              and a["labels"].get("model") == model]  # fmt: skip
    return "firing" if "firing" in states else (states[0] if states else "inactive")


def wait_for(what: str, check: Any, deadline: float, pause: float = 1.0) -> Any:
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(pause)
    raise TimeoutError(f"gave up waiting for {what}")


def demo(spec: ModelSpec, workspace: Path, folder: Path) -> int:
    model = spec.key
    with stack(model, workspace, folder) as (urls, headers):
        drift = urls["drift"], headers
        t0, deadline = time.monotonic(), time.monotonic() + TIMEOUT_S
        say(f"1. calm: {WINDOW} records like the training data -> {model}", t0)
        send(urls["model"], traffic(spec, workspace, seed=1, shifted=False))
        sent = time.time()
        calm = wait_for("a calm verdict", lambda: _verdict(drift, model, sent), deadline)
        say(
            f"   drift service: {_describe(calm)}; alert {alert_state(urls['prometheus'], model)}",
            t0,
        )
        say(f"2. shift: records from another population, until {ALERT} fires", t0)
        state, seed = "inactive", 2
        while state != "firing" and time.monotonic() < deadline:
            send(urls["model"], traffic(spec, workspace, seed=seed, shifted=True))
            seed += 1
            if (now := alert_state(urls["prometheus"], model)) != state:
                state = now
                say(f"   Prometheus: {ALERT}{{model={model}}} is {state}", t0)
            if (last := _verdict(drift, model)) and last["dataset_drifted"]:
                say(f"   drift service: {_describe(last)}", t0)
            time.sleep(1)
        say("3. Alertmanager -> webhook -> drift service: retraining", t0)
        job = wait_for("the retraining job", lambda: job_of(drift, model), deadline)
        say(f"   job {job['id']}: {job['command']} (in {workspace})", t0)
        job = wait_for("its end", lambda: job_of(drift, model, done=True), deadline, 2)
        say(f"   job {job['state']}: version {job['version']} -> @{job['alias']}", t0)
        say(f"   gate: {job['gate']}", t0)
        say(f"4. the registry: {_registry(model)}", t0)
        token = folder / "secrets" / "admin-token"
        say(f"   every step: {urls['drift']}/ (events, jobs, report; token in {token})", t0)
        say(f"   logs in {folder}", t0)
        return 0 if job["state"] in ("promoted", "canary", "challenger") else 1


Drift = tuple[str, dict[str, str]]  # the drift service's URL and credential


def _verdict(drift: Drift, model: str, since: float = 0.0) -> dict[str, Any] | None:
    """The model's last drift result, if it ran at or after `since` (unix time)."""
    url, headers = drift
    response = httpx.get(f"{url}/models/{model}", headers=headers)
    found = response.json() if response.status_code == 200 else None
    return found if found and found["ran_at"] >= since else None


def _describe(result: dict[str, Any]) -> str:
    verdict = "DRIFT" if result["dataset_drifted"] else "no drift"
    drifted = [n for n, f in result["features"].items() if f["drifted"]]
    return f"{verdict}, {len(drifted)}/{len(result['features'])} features ({', '.join(drifted)})"


def job_of(
    drift: Drift, model: str, done: bool = False, job_id: str | None = None
) -> dict[str, Any] | None:
    """The model's newest retraining job (the one `job_id` names, if given); None until
    there is one, or while it is queued or running if `done` is asked for."""
    url, headers = drift
    every = httpx.get(f"{url}/retraining", headers=headers).json()
    jobs = [job for job in every if job["model"] == model and job_id in (None, job["id"])]
    if not jobs or (done and jobs[0]["state"] in ("queued", "running")):
        return None
    return dict(jobs[0])


def _registry(model: str) -> str:
    from mlflow import MlflowClient

    uri = get_settings().mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    aliases = client.get_registered_model(model).aliases
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'"))
    by_version = {int(v): a for a, v in aliases.items()}
    shown = [f"v{v}" + (f" @{by_version[v]}" if v in by_version else "") for v in versions]
    return f"{model}: " + ", ".join(shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.drift_demo", description=__doc__
    )
    parser.add_argument("--model", default="titanic")
    parser.add_argument("--workspace", type=Path, default=ROOT, help="the DVC project to retrain")
    parser.add_argument("--folder", type=Path, default=ROOT / "run" / "drift-demo")
    args = parser.parse_args(argv)
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    try:
        workspace = args.workspace.resolve()
        return demo(get_spec(args.model, workspace / "params.yaml"), workspace, args.folder)
    except TimeoutError as exc:
        say(f"FAILED: {exc} (logs in {args.folder})")
        return 1


if __name__ == "__main__":
    sys.exit(main())
