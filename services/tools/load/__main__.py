"""A headless Locust run with SLO thresholds: what `make load` runs against the local stack.

    python -m services.tools.load                                   # the local stack's proxy
    python -m services.tools.load --host http://127.0.0.1:8080 --users 20 --run-time 60s
    python -m services.tools.load --tags predict batch -- --exclude-tags malformed

Bounded in users and time, aimed at 127.0.0.1 unless told otherwise. Writes the CSV
statistics, the HTML report and slo.json (thresholds, measured values, breaches) to --out.
Exit status: 0 when every request kind of every model met the thresholds, 1 when not.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

from contract.catalog import load_catalog
from contract.paths import ROOT

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
DEFAULT_HOST = f"http://127.0.0.1:{os.environ.get('STACK_PROXY_PORT', '8080')}"


def command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    out = Path(args.out)
    return [
        str(Path(sys.executable).with_name("locust")),
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", args.host,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate),
        "--run-time", args.run_time,
        "--stop-timeout", "10",
        "--data-root", str(Path(args.data_root).resolve()),
        "--slo-error-ratio", str(args.slo_error_ratio),
        "--slo-p95-ms", str(args.slo_p95_ms),
        "--slo-p99-ms", str(args.slo_p99_ms),
        "--slo-report", str(out / "slo.json"),
        "--csv", str(out / "locust"),
        "--html", str(out / "locust.html"),
        "--only-summary",
        *(["--tags", *args.tags] if args.tags else []),
        *extra,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="the proxy (default: %(default)s)")
    models = len(load_catalog())
    parser.add_argument(
        "--users",
        type=int,
        default=models,
        help="concurrent users, all models together; at least one per model (default: %(default)s)",
    )
    parser.add_argument("--spawn-rate", type=float, default=6)
    parser.add_argument("--run-time", default="60s", help="e.g. 30s, 2m")
    parser.add_argument("--data-root", default=str(ROOT), help="where data/split/ is")
    parser.add_argument("--out", default=str(ROOT / "reports" / "load"))
    parser.add_argument("--tags", nargs="*", default=[], help="only these scenarios")
    parser.add_argument("--slo-error-ratio", type=float, default=0.01)
    parser.add_argument("--slo-p95-ms", type=float, default=50.0)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    args, extra = parser.parse_known_args(argv)
    if args.users < models:  # Locust gives each user one class: some models would get none
        parser.error(f"--users {args.users}: at least {models}, one per catalog model")
    extra = [a for a in extra if a != "--"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(f"load: {args.users} users for {args.run_time} against {args.host} -> {args.out}")
    return subprocess.run(command(args, extra), cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
