"""The local stack: every catalog model served as a process, PyTriton for Triton models, the
drift service, the Feast feature server, Prometheus and Alertmanager on infra/'s configs, and
the nginx proxy that routes /models/<key>/ to each model (compose's and k8s' proxy config,
on local ports).

    python -m services.tools.stack up       # start everything, wait until ready, list the ports
    python -m services.tools.stack demo     # one example prediction per model
    python -m services.tools.stack status
    python -m services.tools.stack down     # SIGTERM: in-flight requests finish

The processes run exactly the commands compose and Kubernetes run; their logs go to
run/logs/ and their pids to run/stack.json.
"""

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from contract import paths
from contract.catalog import ModelSpec, load_catalog
from contract.paths import ROOT
from services.api import auth
from services.tools import deploy, monitoring

# Where the stack keeps pids and logs, and its ports: overridable so tests run a second stack
RUN_DIR = Path(os.environ.get("STACK_RUN_DIR", ROOT / "run"))
STATE = RUN_DIR / "stack.json"
# The stack's credentials (services.api.auth), made on its first start: the model services' and
# the drift service's admin token, and Alertmanager's for the drift service's webhooks
ADMIN_TOKEN_FILE = RUN_DIR / "secrets" / "admin-token"
WEBHOOK_TOKEN_FILE = RUN_DIR / "secrets" / "webhook-token"
# the model services' POST /feedback credential (clients sending true outcomes read it)
FEEDBACK_TOKEN_FILE = RUN_DIR / "secrets" / "feedback-token"
BASE_PORT = int(os.environ.get("STACK_BASE_PORT", "8101"))
_TRITON = int(os.environ.get("STACK_TRITON_PORT", "8000"))
TRITON_PORTS = {"http": _TRITON, "grpc": _TRITON + 1, "metrics": _TRITON + 2}
DRIFT_PORT = int(os.environ.get("STACK_DRIFT_PORT", str(monitoring.DRIFT_PORT)))
PROMETHEUS_PORT = int(os.environ.get("STACK_PROMETHEUS_PORT", "9090"))
ALERTMANAGER_PORT = int(
    os.environ.get("STACK_ALERTMANAGER_PORT", str(monitoring.ALERTMANAGER_PORT))
)
FEAST_PORT = int(os.environ.get("STACK_FEAST_PORT", str(deploy.FEAST_PORT)))
PROXY_PORT = int(os.environ.get("STACK_PROXY_PORT", str(deploy.PROXY_PORT)))
TRITON_PYTHON = ROOT / "services" / "triton" / ".venv" / "bin" / "python"
# background work's scheduling priority (nice): the drift service's checks
BACKGROUND_NICE = 10
# every process imports its libraries at once: on 2 busy cores that can take minutes
READY_TIMEOUT_S = float(os.environ.get("STACK_READY_TIMEOUT_S", "300"))


def prediction_log() -> str:
    """The services' and the drift service's log: as configured, or the stack's own file."""
    return os.environ.get("SERVE_PREDICTION_LOG") or f"sqlite:///{RUN_DIR / 'predictions.sqlite'}"


def default_ports() -> dict[int, int]:
    """infra/'s default port -> this stack's port (tests run a stack on other ports)."""
    models = {monitoring.MODEL_BASE_PORT + i: BASE_PORT + i for i in range(len(load_catalog()))}
    triton = {8000 + i: port for i, port in enumerate(TRITON_PORTS.values())}
    return (
        models
        | triton
        | {
            monitoring.DRIFT_PORT: DRIFT_PORT,
            monitoring.ALERTMANAGER_PORT: ALERTMANAGER_PORT,
        }
    )


def monitoring_processes(root: Path) -> list[dict[str, Any]]:
    """The drift service, and Prometheus and Alertmanager on infra/'s configs (when installed)."""
    folder = RUN_DIR / "monitoring"
    processes: list[dict[str, Any]] = [
        {
            "name": "drift",
            "command": [sys.executable, "-m", "services.drift", "--port", str(DRIFT_PORT)],
            "env": {
                "DRIFT_PREDICTION_LOG": prediction_log(),
                "DRIFT_STATE_DIR": str(RUN_DIR / "drift"),
                "DRIFT_WORKSPACE": str(root),  # the DVC project a drift alert retrains
                "DRIFT_ADMIN_TOKEN_FILE": str(ADMIN_TOKEN_FILE),
                "DRIFT_WEBHOOK_TOKEN_FILE": str(WEBHOOK_TOKEN_FILE),
                # the canary's guardrails: errors and latency per alias
                "DRIFT_PROMETHEUS_URL": f"http://127.0.0.1:{PROMETHEUS_PORT}",
            },
            "url": f"http://127.0.0.1:{DRIFT_PORT}",
            "ready": "/readyz",
            # its checks (every model's window through Evidently: most of a core for seconds
            # every 5 minutes) yield the CPU to the model services: compose and k8s give it
            # its own CPU limits instead
            "nice": BACKGROUND_NICE,
        }
    ]
    processes.append(
        {
            "name": "feast",
            "command": deploy.feast_command(
                feast=str(Path(sys.executable).with_name("feast")),
                repo=str(root / "feature_repo"),
                host="127.0.0.1",
                port=FEAST_PORT,
            ),
            "url": f"http://127.0.0.1:{FEAST_PORT}",
            "ready": "/health",
        }
    )
    if prometheus := shutil.which("prometheus"):
        processes.append(
            {
                "name": "prometheus",
                "command": [
                    prometheus,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={RUN_DIR / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
                ],
                "url": f"http://127.0.0.1:{PROMETHEUS_PORT}",
                "ready": "/-/ready",
            }
        )
    if alertmanager := shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"):
        processes.append(
            {
                "name": "alertmanager",
                "command": [
                    alertmanager,
                    f"--config.file={folder / 'alertmanager.yml'}",
                    f"--storage.path={RUN_DIR / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}",
                    "--cluster.listen-address=",  # one instance: no cluster port
                ],
                "url": f"http://127.0.0.1:{ALERTMANAGER_PORT}",
                "ready": "/-/ready",
            }
        )
    return processes


def proxy_config() -> Path:
    """infra/proxy/nginx.conf's template on this stack's ports, with its temp files here."""
    folder = RUN_DIR / "proxy"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o1777)  # nginx's workers drop root to `nobody` and buffer bodies here
    addresses = {key: f"127.0.0.1:{BASE_PORT + i}" for i, key in enumerate(load_catalog())}
    config = deploy.nginx_conf(
        addresses | {"drift": f"127.0.0.1:{DRIFT_PORT}"},
        listen=f"127.0.0.1:{PROXY_PORT}",
        temp=str(folder),
        access_log=str(RUN_DIR / "logs" / "proxy-access.log"),
        workers="1",
    )
    (folder / "nginx.conf").write_text(config)
    return folder / "nginx.conf"


def proxy_process() -> list[dict[str, Any]]:
    if not (nginx := shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")):
        return []
    folder = RUN_DIR / "proxy"
    return [
        {
            "name": "proxy",
            "command": [
                nginx,
                "-c", str(folder / "nginx.conf"),
                "-p", str(folder),
                "-e", str(RUN_DIR / "logs" / "proxy-error.log"),
                "-g", "daemon off;",
            ],
            "url": f"http://127.0.0.1:{PROXY_PORT}",
            "ready": "/healthz",
        }
    ]  # fmt: skip


def plan(root: Path = ROOT) -> list[dict[str, Any]]:
    """Every process of the stack: name, command, URL and the route that says it is ready."""
    processes = []
    catalog = load_catalog()
    for index, key in enumerate(catalog):
        port = BASE_PORT + index
        processes.append(
            {
                "name": key,
                "command": [sys.executable, "-m", "services.serve", key, "--port", str(port)],
                "env": {
                    "SERVE_FEATURE_ROOT": str(root),  # Feast-backed: root's online store
                    "SERVE_PREDICTION_LOG": prediction_log(),
                    "SERVE_ADMIN_TOKEN_FILE": str(ADMIN_TOKEN_FILE),
                    "SERVE_FEEDBACK_TOKEN_FILE": str(FEEDBACK_TOKEN_FILE),
                },
                "url": f"http://127.0.0.1:{port}",
                "ready": "/readyz",
            }
        )
    return processes + triton_process(catalog, root) + monitoring_processes(root) + proxy_process()


def triton_process(catalog: dict[str, ModelSpec], root: Path) -> list[dict[str, Any]]:
    """One PyTriton server for every exported Triton repository (as tritonserver takes
    several --model-repository)."""
    repositories = [
        str((paths.onnx_model(key, root).parent / "triton").resolve())
        for key, spec in catalog.items()
        if spec.triton is not None
        and (paths.onnx_model(key, root).parent / "triton" / key / "config.pbtxt").exists()
    ]
    if not repositories:
        return []
    ports = [str(TRITON_PORTS[k]) for k in ("http", "grpc", "metrics")]
    # Triton's own readiness comes before serve.py loads the BLS models: ready means every
    # model folder of every repository ready (the stack answered "up" with a BLS model
    # still loading, and its first request got "no available versions")
    models = sorted(
        model.name
        for repository in repositories
        for model in Path(repository).iterdir()
        if (model / "config.pbtxt").is_file()
    )
    return [
        {
            "name": "triton",
            "command": [
                str(TRITON_PYTHON),
                "services/triton/serve.py",
                *[arg for repo in repositories for arg in ("--repository", repo)],
                "--http-port",
                ports[0],
                "--grpc-port",
                ports[1],
                "--metrics-port",
                ports[2],
            ],
            "url": f"http://127.0.0.1:{ports[0]} (gRPC 127.0.0.1:{ports[1]})",
            "ready": ["/v2/health/ready", *(f"/v2/models/{name}/ready" for name in models)],
        }
    ]


def _base(url: str) -> str:
    return url.split(" ")[0]


def is_ready(process: dict[str, Any]) -> bool:
    """Its readiness route answers 200 (every one of them, where it has several)."""
    routes = process["ready"] if isinstance(process["ready"], list) else [process["ready"]]
    try:
        return all(
            httpx.get(_base(process["url"]) + route, timeout=2).status_code == 200
            for route in routes
        )
    except httpx.TransportError:
        return False


def up(root: Path = ROOT) -> int:
    if STATE.exists():
        started = json.loads(STATE.read_text())
        if all(alive(p["pid"]) for p in started):
            print("the stack is already up (`python -m services.tools.stack down` stops it)")
            return wait(started)
        print("cleaning up after a stack that did not stop cleanly")
        down(root)
    (RUN_DIR / "logs").mkdir(parents=True, exist_ok=True)
    for token in (ADMIN_TOKEN_FILE, WEBHOOK_TOKEN_FILE, FEEDBACK_TOKEN_FILE):
        auth.local_token(token)
    monitoring.write(RUN_DIR / "monitoring", default_ports(), DRIFT_PORT, WEBHOOK_TOKEN_FILE)
    proxy_config()
    started = []
    for process in plan(root):
        log = (RUN_DIR / "logs" / f"{process['name']}.log").open("ab")
        nice = process.get("nice", 0)
        child = subprocess.Popen(
            process["command"],
            cwd=ROOT,
            env=os.environ | process.get("env", {}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(os.nice, nice) if nice else None,
        )
        started.append(process | {"pid": child.pid})
    STATE.write_text(json.dumps(started, indent=2) + "\n")
    return wait(started)


def wait(started: list[dict[str, Any]]) -> int:
    """Wait for every process to be ready, with a line per process as it gets there."""
    pending, deadline = list(started), time.monotonic() + READY_TIMEOUT_S
    print(f"starting {len(started)} processes (logs in {RUN_DIR / 'logs'})", flush=True)
    while pending and time.monotonic() < deadline:
        for process in list(pending):
            if is_ready(process):
                print(f"  ready  {process['name']:<20} {process['url']}", flush=True)
                pending.remove(process)
            elif not alive(process["pid"]):
                print(f"  FAILED {process['name']}: see {RUN_DIR / 'logs' / process['name']}.log")
                print(_tail(RUN_DIR / "logs" / f"{process['name']}.log"))
                return 1
        time.sleep(0.5)
    for process in pending:
        print(f"  NOT READY after {READY_TIMEOUT_S:.0f}s: {process['name']} ({RUN_DIR / 'logs'})")
        print(_tail(RUN_DIR / "logs" / f"{process['name']}.log"))
    return 1 if pending else 0


def _tail(log: Path, lines: int = 20) -> str:
    """The end of a process's log, indented: why it is not ready, where CI keeps no files."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"      (no log: {exc})"
    return "\n".join(f"      | {line}" for line in text)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running() -> list[dict[str, Any]] | None:
    """The processes `up` started, or None (with a line saying so) when the stack is not up."""
    if not STATE.exists():
        print("the stack is not up")
        return None
    started: list[dict[str, Any]] = json.loads(STATE.read_text())
    return started


def down(root: Path = ROOT) -> int:
    if (started := running()) is None:
        return 0
    for process in started:
        if alive(process["pid"]):
            os.killpg(process["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while any(alive(p["pid"]) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in started:
        if alive(process["pid"]):
            os.killpg(process["pid"], signal.SIGKILL)
        print(f"  stopped {process['name']}")
    STATE.unlink()
    return 0


def status(root: Path = ROOT) -> int:
    if (started := running()) is None:
        return 1
    for process in started:
        state = "ready" if is_ready(process) else "up" if alive(process["pid"]) else "dead"
        print(f"  {state:<6} {process['name']:<20} {process['url']}")
    return 0 if all(is_ready(p) for p in started) else 1


def main(argv: list[str] | None = None) -> None:
    from services.tools import demo

    commands = {"up": up, "down": down, "status": status, "demo": demo.main}
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(commands))
    parser.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="project root whose artifacts/ and data/ to use (default: this repo)",
    )
    args = parser.parse_args(argv)
    sys.exit(commands[args.command](args.root))


if __name__ == "__main__":
    main()
