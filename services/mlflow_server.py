"""The MLflow server of compose and Kubernetes, behind MLflow's own basic-auth app.

`python -m services.mlflow_server [mlflow server options]` runs `mlflow server --app-name
basic-auth` on the backend store named by MLFLOW_BACKEND_STORE_URI, with two accounts whose
passwords are the platform's secrets:

- MLFLOW_AUTH_ADMIN_USERNAME (default `admin`) / MLFLOW_AUTH_ADMIN_PASSWORD: the writer (the
  trainer, and the drift service's retraining, which registers and moves aliases);
- MLFLOW_READER_USERNAME (default `reader`) / MLFLOW_READER_PASSWORD: the model services',
  which only read (MLflow's default permission, READ, for a user without grants).

Every start creates a missing account and sets both passwords again, so the secret store is the
one place a password changes. Users and grants live in the backend's database beside the
tracking tables (MLflow keeps them in their own migration table). The auth app's configuration
names that database, password included, so it is written at start to a file only this user can
read, in the container's tmpfs: never into the image, the manifests or a command line.
MLflow's server-side jobs are off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says otherwise.
A checked credential is trusted for MLFLOW_AUTH_CACHE_TTL_S seconds (60; 0: every request is
hashed), which made a registration 2.5 times faster.
"""

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from services.api.auth import problems

SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
DEFAULT_PERMISSION = "READ"
AUTH_CACHE_TTL_S = 60


def config_text(database_uri: str, admin: str, cache_ttl_s: int = AUTH_CACHE_TTL_S) -> str:
    """The auth app's configuration (mlflow/server/auth/basic_auth.ini's keys).

    A checked credential is trusted for `cache_ttl_s` per worker: each check is a scrypt hash
    (about 0.1 s of a core here), and a client's every call is a request (a registration is
    dozens). Passwords change at a start (provision), which empties the cache; during a
    rolling restart a replica still running accepts the old one for at most that long."""
    return (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"  # configparser's interpolation
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_ttl_s}\n"
        "auth_cache_max_size = 64\n"  # two accounts; a wrong password is never cached
    )


def write_config(database_uri: str, admin: str, directory: Path, cache_ttl_s: int) -> Path:
    """A private file holding the auth configuration (mode 0600)."""
    descriptor, name = tempfile.mkstemp(prefix="mlflow-auth-", suffix=".ini", dir=directory)
    with os.fdopen(descriptor, "w") as handle:  # mkstemp: 0600, this user's
        handle.write(config_text(database_uri, admin, cache_ttl_s))
    return Path(name)


def cache_ttl(environ: Mapping[str, str]) -> int:
    """MLFLOW_AUTH_CACHE_TTL_S: seconds a checked credential is trusted (0: hash every request)."""
    text = environ.get("MLFLOW_AUTH_CACHE_TTL_S", "").strip() or str(AUTH_CACHE_TTL_S)
    if not text.isdigit():
        raise SystemExit(
            f"refusing to start: MLFLOW_AUTH_CACHE_TTL_S is {text!r}, not whole seconds >= 0"
        )
    return int(text)


def accounts(environ: Mapping[str, str]) -> dict[str, tuple[str, bool]]:
    """Username -> (password, is_admin) of the two accounts."""
    admin = environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
    reader = environ.get("MLFLOW_READER_USERNAME") or "reader"
    if admin == reader:
        raise SystemExit("refusing to start: the admin and reader accounts share a name")
    return {
        admin: (environ["MLFLOW_AUTH_ADMIN_PASSWORD"], True),
        reader: (environ["MLFLOW_READER_PASSWORD"], False),
    }


def provision(database_uri: str, users: Mapping[str, tuple[str, bool]]) -> None:
    """Create the accounts that are missing and set every password and role (MLflow's store)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)  # type: ignore[no-untyped-call]  # its tables' migrations
    for name, (password, is_admin) in users.items():
        if store.has_user(name, use_primary=True):
            store.update_user(name, password=password, is_admin=is_admin)
        else:
            store.create_user(name, password, is_admin=is_admin)
        print(f"mlflow account {name!r} ready ({'admin' if is_admin else 'read only'})")


def main(argv: list[str] | None = None) -> None:
    """Check the secrets, write the auth configuration, provision the accounts and replace
    this process with `mlflow server --app-name basic-auth ARGS`."""
    args = sys.argv[1:] if argv is None else argv
    found = problems(SECRETS, os.environ)
    if not os.environ.get("MLFLOW_BACKEND_STORE_URI"):
        found.insert(0, "MLFLOW_BACKEND_STORE_URI is not set")
    if found:
        raise SystemExit("refusing to start: " + "; ".join(found))
    database_uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
    users = accounts(os.environ)
    admin = next(name for name, (_, is_admin) in users.items() if is_admin)
    config = write_config(database_uri, admin, Path(tempfile.gettempdir()), cache_ttl(os.environ))
    provision(database_uri, users)
    sys.stdout.flush()
    environ = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config)}
    # the platform uses none of the server's background jobs (GenAI scorers, trace archival):
    # without this, three job consumers start beside the workers (~250 MB each)
    environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow would bootstrap the admin from these too; provision() already did
    environ.pop("MLFLOW_AUTH_ADMIN_PASSWORD")
    os.execvpe("mlflow", ["mlflow", "server", "--app-name", "basic-auth", *args], environ)


if __name__ == "__main__":
    main()
