"""The stack's DVC remote given what a team's shared remote would hold before a first `up`: the
runs of the host tiers' reduced `dvc repro` (their run cache and the outputs it names), but
those of TRAINED_HERE, which the trainer container therefore trains itself.

The trainer's `dvc repro --pull` (docker-compose.yml) restores every stage whose run the
remote holds and runs the rest. The stages with side effects (Feast's apply and materialise,
register) are never run-cached (an output with `cache: false`), so the stack's own MLflow,
Postgres and Redis get every registration and row as from nothing. The reduced params are the
same on both sides (tests/integration/reduced_params.yaml), so the stage runs match; what the
container must still prove it can do from nothing (its image's scikit-learn and PyTorch, the
data packages) it does for TRAINED_HERE, and the tier checks which stages ran and which were
restored (test_compose_stack.py). Without it the trainer repeated the host tiers' 20 minutes of
training on the stack's busy engine (35 minutes with the 18 models), most of CI's time.
"""

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# a gradient-boosted table (scikit-learn) and a 1-D CNN (PyTorch), trained in the container
TRAINED_HERE = ("titanic", "activity_recognition")
PREFIX = "cache"  # docker-compose.yml's DVC_REMOTE_URL: s3://dvc/cache
BUCKET = "dvc"


@dataclass(frozen=True)
class Seed:
    """What goes to the remote: run-cache entries and the cached objects their outputs name."""

    runs: list[Path]
    objects: list[Path]
    skipped_runs: int

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.objects)


def stage_model(entry: dict[str, Any]) -> str:
    """The catalog key a run belongs to: the last word of its command (`... train titanic`)."""
    return str(entry.get("cmd", "")).split()[-1] if entry.get("cmd") else ""


def object_path(cache: Path, md5: str) -> Path:
    return cache / "files" / "md5" / md5[:2] / md5[2:]


def outputs(cache: Path, entry: dict[str, Any]) -> Iterator[Path]:
    """The cached objects of a run's outputs: each file, and a directory's manifest and files."""
    for out in entry.get("outs", []):
        md5 = out.get("md5")  # DVC 3 writes `hash: md5` beside it: the algorithm's name
        if not md5:
            continue
        path = object_path(cache, md5)
        yield path
        if md5.endswith(".dir") and path.exists():
            for item in json.loads(path.read_text()):
                yield object_path(cache, item["md5"])


def collect(cache: Path, trained_here: tuple[str, ...] = TRAINED_HERE) -> Seed:
    """Every run in the workspace's cache but those of `trained_here`, with their objects."""
    runs, objects, skipped = [], set(), 0
    for run in sorted((cache / "runs").rglob("*")):
        if not run.is_file():
            continue
        entry = yaml.safe_load(run.read_text()) or {}
        if stage_model(entry) in trained_here:
            skipped += 1
            continue
        needed = set(outputs(cache, entry))
        if not all(p.exists() for p in needed):  # a run whose outputs were since removed
            skipped += 1
            continue
        runs.append(run)
        objects |= needed
    return Seed(runs, sorted(objects), skipped)


def upload(s3: Any, cache: Path, seed: Seed, workers: int = 8) -> None:
    """The seed under s3://dvc/cache/ with the layout DVC reads (files/md5/.., runs/..)."""

    def put(path: Path) -> None:
        s3.upload_file(str(path), BUCKET, f"{PREFIX}/{path.relative_to(cache).as_posix()}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, [*seed.objects, *seed.runs]))
