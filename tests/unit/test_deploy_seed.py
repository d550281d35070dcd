"""The deploy tier's seeded DVC remote (tests/deploy/seed.py) on a real DVC repository: a fresh
workspace's `dvc repro --pull` (the compose trainer's command) restores the runs the remote
holds, runs those left out, and always runs a stage with an uncached output (register's)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from contract.paths import ROOT
from tests.deploy import seed

DVC = [sys.executable, "-m", "dvc"]
PIPELINE = {
    "stages": {
        "apply": {  # Feast's apply: an uncached output the other stages depend on
            "cmd": "echo apply >> ran.log && echo applied > apply.json",
            "deps": ["data.txt"],
            "outs": [{"apply.json": {"cache": False}}],
        },
        "train": {
            "foreach": ["titanic", "house_prices"],
            "do": {
                "cmd": "echo ${item} >> ran.log && echo model-${item} > model-${item}.txt"
                " && mkdir -p out-${item} && echo a-${item} > out-${item}/a"
                " # python -m pipelines.train ${item}",
                "deps": ["data.txt", "apply.json"],
                "outs": ["model-${item}.txt", "out-${item}"],
            },
        },
        "register": {
            "cmd": "echo register >> ran.log && cat model-*.txt > registry.json",
            "deps": ["model-titanic.txt", "model-house_prices.txt"],
            "outs": [{"registry.json": {"cache": False}}],
        },
    }
}


def dvc(cwd: Path, *args: str) -> str:
    done = subprocess.run([*DVC, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def workspace(root: Path) -> Path:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    (root / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    (root / "data.txt").write_text("rows\n")
    return root


def test_the_seed_holds_every_run_but_those_trained_here_with_their_objects(
    tmp_path: Path,
) -> None:
    team = workspace(tmp_path / "team")
    dvc(team, "repro")
    cache = team / ".dvc" / "cache"
    found = seed.collect(cache, trained_here=("titanic",))
    entries = [yaml.safe_load(run.read_text()) for run in found.runs]
    assert [seed.stage_model(e) for e in entries] == ["house_prices"]
    assert found.skipped_runs == 1  # titanic's; apply and register (uncached) have no entry
    # the model file, the folder's manifest and the file in it
    assert len(found.objects) == 3 and all(p.is_file() for p in found.objects)
    assert found.size == sum(p.stat().st_size for p in found.objects)

    remote = tmp_path / "remote"
    for path in [*found.objects, *found.runs]:  # upload()'s layout, on a local remote
        (remote / path.relative_to(cache)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, remote / path.relative_to(cache))
    # the trainer image: the repository's dvc.lock (another machine's run), an empty state
    fresh = workspace(tmp_path / "fresh")
    shutil.copy2(team / "dvc.lock", fresh / "dvc.lock")
    dvc(fresh, "remote", "add", "--local", "--default", "storage", str(remote))
    done = subprocess.run(
        [str(ROOT / "infra" / "docker" / "with-dvc-state"), *DVC, "repro", "--pull"],
        cwd=fresh, env=os.environ | {"DVC_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert "Stage 'train@house_prices' is cached - skipping run" in log, log
    assert (fresh / "ran.log").read_text().split() == ["apply", "titanic", "register"]
    assert (tmp_path / "state" / "dvc.lock").read_text() == (fresh / "dvc.lock").read_text()
    assert (fresh / "model-house_prices.txt").read_text() == "model-house_prices\n"
    assert (fresh / "out-house_prices" / "a").read_text() == "a-house_prices\n"
    assert (fresh / "registry.json").read_text() == (team / "registry.json").read_text()


def test_a_lock_the_script_cannot_drop_stops_it_before_the_command(tmp_path: Path) -> None:
    """A new workspace whose repository lock cannot go (the image's /app was root's: `rm`
    refused, and `dvc repro --pull` went on with another machine's lock) stops at once."""
    (tmp_path / "dvc.lock").mkdir()  # what `rm -f` cannot remove, even as root
    done = subprocess.run(
        [str(ROOT / "infra" / "docker" / "with-dvc-state"), "touch", "ran"],
        cwd=tmp_path, env=os.environ | {"DVC_STATE_DIR": str(tmp_path / "state")},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1 and not (tmp_path / "ran").exists()
    assert "cannot drop the repository's dvc.lock" in done.stderr
