"""Locust: a user class per catalog model, against the proxy (/models/<key>/...).

    locust -f services/tools/load/locustfile.py --host http://127.0.0.1:8080         # web UI :8089
    python -m services.tools.load                        # headless, SLO thresholds (make load)

Each user sends its model's test-split rows (services/tools/load/payloads.py) as:
    predict    one record                                        tag `predict`  weight 8
    batch      10 records (not for a search: one query at a time)  tag `batch`    weight 2
    entity     entity keys, features from Feast (Feast-backed)   tag `entity`   weight 2
    malformed  one field of the wrong type: must be a 400 naming it  tag `malformed` weight 1
`--tags predict batch` (or --exclude-tags) picks scenarios; `TitanicUser ChurnUser` on the
command line picks models. At the end, the SLO thresholds (--slo-*) are checked on every
request kind of every model (its percentiles once it has the samples to define them) and on
the total: a breach is the run's exit status 1.

Pacing: by default a user waits 50-250 ms between requests (a closed loop: a slow stack gets
fewer requests). `--user-rate R` makes each user a Poisson process of R x its model's
share (payloads.share) requests/s (1 for most: R), whatever the answers' times (an open loop:
random gaps, as independent clients make them, and a random start, so users never fall into
step and arrive in bursts), so N users per model offer N x R x the shares' sum requests/s
(services/tools/load/capacity.py's steps). A shed answer (429 or
503 with Retry-After) is a failure named "shed"; the report counts answers by status code and
whether each shed said when to retry.
"""

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from locust import FastHttpUser, events, tag
from locust.env import Environment
from locust.stats import StatsEntry

from contract.catalog import load_catalog
from services.tools.load import slo
from services.tools.load.payloads import pool, share

BATCH = 10
# Read once: parsing params.yaml takes ~0.1 s, and anything a user does at its start blocks
# every other user's request in flight (one gevent loop): their timings would include it
CATALOG = load_catalog()
MAX_DEBT_S = 1.0
SHED = (429, 503)  # over capacity: the client is told to come back (Retry-After)


def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--data-root", default=".", env_var="LOAD_DATA_ROOT",
        help="project root whose data/split/<key>/test.parquet hold the payloads",
    )  # fmt: skip
    parser.add_argument(
        "--path-template", default="/models/{key}", env_var="LOAD_PATH_TEMPLATE",
        help="where a model's routes are under --host (the proxy: /models/{key})",
    )  # fmt: skip
    parser.add_argument(
        "--slo-error-ratio", type=float, default=0.01, env_var="LOAD_SLO_ERROR_RATIO",
        help="most failed requests per request kind (a malformed one fails unless it is a 400)",
    )  # fmt: skip
    parser.add_argument("--slo-p95-ms", type=float, default=50.0, env_var="LOAD_SLO_P95_MS")
    parser.add_argument("--slo-p99-ms", type=float, default=50.0, env_var="LOAD_SLO_P99_MS")
    parser.add_argument(
        "--user-rate", type=float, default=0.0, env_var="LOAD_USER_RATE",
        help="requests/s a user sends whatever the answers' times, times its model's share "
        "(0: 50-250 ms pauses)",
    )  # fmt: skip
    parser.add_argument(
        "--slo-report", default="", env_var="LOAD_SLO_REPORT",
        help="write the thresholds and the measured values here (JSON)",
    )  # fmt: skip


events.init_command_line_parser.add_listener(_arguments)  # type: ignore[no-untyped-call]


class ModelUser(FastHttpUser):
    """One catalog model's client; the subclasses below set `key`."""

    abstract = True
    key = ""
    rate = 0.0  # --user-rate: requests/s of this user's Poisson process (0: not paced)
    due = 0.0  # when its next request is due (time.monotonic())

    def wait_time(self) -> float:
        if not self.rate:
            return self.rng.uniform(0.05, 0.25)
        now = time.monotonic()
        # the next arrival of this user's Poisson process; a user that fell behind (a slow
        # answer) catches up at most MAX_DEBT_S of arrivals, not a burst of all it missed
        self.due = max(self.due, now - MAX_DEBT_S) + self.rng.expovariate(self.rate)
        return max(0.0, self.due - now)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.rng = random.Random()
        self.spec = CATALOG[self.key]
        # paced: this model's share of the mix (payloads.share: 1 for most)
        self.rate = float(options.user_rate) * share(self.spec)
        if self.rate:  # a random first arrival: users spawned together must not fire together
            time.sleep(self.rng.expovariate(self.rate))
            self.due = time.monotonic()
        self.pool = pool(self.key, Path(options.data_root).resolve())
        self.base = options.path_template.format(key=self.key)

    def _post(self, body: dict[str, Any], kind: str, expected: int) -> None:
        name = f"{self.key} {kind}"
        with self.client.post(
            f"{self.base}/predict", json=body, name=name, catch_response=True
        ) as response:
            if response.status_code in SHED:
                response.failure(f"shed: HTTP {response.status_code}")
            elif response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json()["predictions"]) != expected:
                response.failure(f"{expected} predictions expected")

    @tag("predict")
    def predict(self) -> None:
        self._post(self.pool.one(self.rng), "/predict", 1)

    @tag("batch")
    def batch(self) -> None:
        body = self.pool.batch(self.rng, BATCH)
        self._post(body, f"/predict [{BATCH}]", len(body["records"]))

    @tag("entity")
    def entity(self) -> None:
        body = self.pool.entity(self.rng)
        entities = body.get("entities") or next(iter(body.values()))
        self._post(body, "/predict [entity]", len(entities))

    @tag("malformed")
    def malformed(self) -> None:
        body, field = self.pool.malformed(self.rng, self.spec)
        with self.client.post(
            f"{self.base}/predict", json=body, name=f"{self.key} /predict [malformed]",
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 400 and field in response.text:
                response.success()
            elif response.status_code in SHED:
                response.failure(f"shed: HTTP {response.status_code}")
            else:
                response.failure(f"expected 400 naming {field}, got {response.status_code}")


def _user_class(key: str) -> type[ModelUser]:
    spec = CATALOG[key]
    tasks = {ModelUser.predict: 8, ModelUser.batch: 2, ModelUser.malformed: 1}
    if not spec.task_kind.BULK:  # people search one query at a time; a batch of searches
        del tasks[ModelUser.batch]  # is bulk work (~80 ms of encoding: make bench measures it)
    if spec.features is not None:
        tasks[ModelUser.entity] = 2
    name = "".join(part.title() for part in key.split("_")) + "User"
    return type(name, (ModelUser,), {"key": key, "tasks": tasks, "__module__": __name__})


globals().update({cls.__name__: cls for cls in map(_user_class, CATALOG)})


def _load_pools(environment: Environment, **_: Any) -> None:
    """Every model's payloads before the first user starts (0.2-0.5 s each to read)."""
    if environment.parsed_options is not None:
        root = Path(environment.parsed_options.data_root).resolve()
        for key in CATALOG:
            pool(key, root)


events.test_start.add_listener(_load_pools)  # type: ignore[no-untyped-call]


# Answers by status code ("0": no answer: a refused or broken connection), and sheds
# (429/503) by whether they carried Retry-After; counted since the last reset of the stats
STATUSES: Counter[str] = Counter()


def _count(response: Any = None, **_: Any) -> None:
    code = getattr(response, "status_code", 0) or 0
    STATUSES[str(code)] += 1
    if code in SHED:
        retry = (response.headers or {}).get("retry-after")
        STATUSES[f"{code} with Retry-After" if retry else f"{code} without Retry-After"] += 1


def _clear_on_reset(environment: Environment, **_: Any) -> None:
    """--reset-stats: the count starts with the full load, as Locust's statistics do."""
    if environment.reset_stats:
        environment.events.spawning_complete.add_listener(  # type: ignore[no-untyped-call]
            lambda **_: STATUSES.clear()
        )


events.request.add_listener(_count)  # type: ignore[no-untyped-call]
events.init.add_listener(_clear_on_reset)  # type: ignore[no-untyped-call]


def _measured(entry: StatsEntry) -> dict[str, float]:
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "error_ratio": entry.num_failures / entry.num_requests if entry.num_requests else 0.0,
        "p50_ms": entry.get_response_time_percentile(0.5) or 0.0,
        "p95_ms": entry.get_response_time_percentile(0.95) or 0.0,
        "p99_ms": entry.get_response_time_percentile(0.99) or 0.0,
        "max_ms": entry.max_response_time or 0.0,
        "rps": entry.total_rps,
    }


def _per_model(environment: Environment) -> dict[str, dict[str, float]]:
    """Every request kind of a model merged: the model's own percentiles."""
    merged: dict[str, StatsEntry] = {}
    for entry in environment.stats.entries.values():
        key = entry.name.split(" ", 1)[0]
        if key not in merged:
            merged[key] = StatsEntry(environment.stats, key, "", use_response_times_cache=False)
        merged[key].extend(entry)
    return {key: _measured(entry) for key, entry in sorted(merged.items())}


def check_slo(environment: Environment) -> list[str]:
    """Every breach of the thresholds, per request kind and in total (percentiles where
    there are enough requests to have them: services/tools/load/slo.py)."""
    options = environment.parsed_options
    assert options is not None
    limits = {
        "error_ratio": options.slo_error_ratio,
        "p95_ms": options.slo_p95_ms,
        "p99_ms": options.slo_p99_ms,
    }
    entries = {f"{e.method} {e.name}": e for e in environment.stats.entries.values()}
    entries["total"] = environment.stats.total
    results = {name: _measured(entry) for name, entry in sorted(entries.items())}
    objectives = {key: spec.slo.p99_ms for key, spec in CATALOG.items()}
    breaches = slo.breaches(results, limits, objectives)
    if options.slo_report:
        report = {
            "thresholds": limits,
            "min_samples": slo.MIN_SAMPLES,
            "user_rate": options.user_rate,
            "results": results,
            "models": _per_model(environment),
            "statuses": dict(sorted(STATUSES.items())),
            "breaches": breaches,
        }
        Path(options.slo_report).parent.mkdir(parents=True, exist_ok=True)
        Path(options.slo_report).write_text(json.dumps(report, indent=2) + "\n")
    return breaches


def _slo(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is None or environment.runner is None:
        return
    breaches = check_slo(environment)
    for breach in breaches:
        print(f"SLO breached: {breach}")
    print("SLO met" if not breaches else f"SLO: {len(breaches)} breach(es)")
    # failures within the error budget do not fail the run; a breach does, and so does an
    # exception in this file (Locust's own exit status then)
    if breaches:
        environment.process_exit_code = 1
    elif not environment.runner.exceptions:
        environment.process_exit_code = 0


events.quitting.add_listener(_slo)  # type: ignore[no-untyped-call]
