"""The online stores the feature benchmark reads: the embedded SQLite one, and a Redis one
(registry in Postgres) built for the run and removed after it."""

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from contract.features import FS_YAML_ENV, repo_path
from contract.paths import ROOT

if TYPE_CHECKING:
    from redis import Redis


class StoreError(RuntimeError):
    """The Redis variant cannot be built; the message says why."""


@dataclass(frozen=True)
class Store:
    """An online store as the services see it: a project root and the environment naming it."""

    name: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)


def sqlite_store() -> Store:
    """The embedded default, already materialised by `dvc repro` (named explicitly, so an
    exported FEAST_FS_YAML_FILE_PATH cannot turn it into another store)."""
    return Store("sqlite", ROOT, {FS_YAML_ENV: str(repo_path(ROOT) / "feature_store.yaml")})


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` set, as it was afterwards (Feast reads its yaml's ${VARS} there)."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _redis_client(address: str) -> "Redis":
    from redis import Redis

    host_port, *options = address.split(",")
    host, _, port = host_port.partition(":")
    settings = dict(option.split("=", 1) for option in options)
    return Redis(host=host, port=int(port or 6379), db=int(settings.get("db", 0)))


def _scratch_root(folder: Path) -> Path:
    """A project root of its own: a copy of feature_repo/ and a link to data/. `apply` and
    `materialize` write their manifests under the root, and the repo's are DVC's outputs."""
    root = folder / "feast-root"
    shutil.copytree(repo_path(ROOT), repo_path(root), ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data").symlink_to(ROOT / "data")  # the definitions resolve sources from here
    return root


def _stage(command: str, root: Path, env: dict[str, str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pipelines.features", command, "--root", str(root)]
    with log.open("ab") as output:
        done = subprocess.run(
            argv,
            env=os.environ | env | {"PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise StoreError(f"features {command} exited with {done.returncode}; see {log}")


@contextlib.contextmanager
def redis_store(redis: str, registry_db: str, scratch: Path) -> Iterator[Store]:
    """Apply and materialise feature_repo/ into Redis `redis` (host:port,db=N, which must be
    empty) with a new Postgres database `registry_db` as registry; both removed afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    client = _redis_client(redis)
    database = str(conninfo_to_dict(registry_db).get("dbname", ""))
    try:
        if client.dbsize():
            raise StoreError(f"redis {redis} is not empty: name an empty db (,db=N)")
        admin = psycopg.connect(make_conninfo(registry_db, dbname="postgres"), autocommit=True)
    except Exception as exc:  # redis or postgres unreachable: the variant is skipped
        raise StoreError(f"redis {redis} / postgres {registry_db}: {exc}") from exc
    url = registry_db.replace("postgresql://", "postgresql+psycopg://", 1)
    root = _scratch_root(scratch)
    env = {
        FS_YAML_ENV: str(repo_path(root) / "feature_store.production.yaml"),
        "FEAST_REGISTRY_URL": url,
        "FEAST_REDIS": redis,
    }
    with admin:
        try:
            admin.execute(f'CREATE DATABASE "{database}"')
        except psycopg.errors.DuplicateDatabase as exc:  # never reuse (nor drop) someone's
            raise StoreError(f"database {database} exists: drop it or name another") from exc
        try:
            for command in ("apply", "materialize"):
                _stage(command, root, env, scratch / "logs" / "feast-redis.log")
            yield Store("redis", root, env)
        finally:
            client.flushdb()
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
