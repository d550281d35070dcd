"""The MLflow server's auth configuration (services/mlflow_server.py); the server itself runs
over real HTTP in tests/integration/test_mlflow_auth.py."""

import configparser

import pytest

from services.mlflow_server import AUTH_CACHE_TTL_S, cache_ttl, config_text


def parsed(text: str) -> configparser.SectionProxy:
    config = configparser.ConfigParser()  # as MLflow's auth app reads it, interpolation on
    config.read_string(text)
    return config["mlflow"]


def test_the_configuration_caches_checked_credentials_and_keeps_a_percent_in_the_url() -> None:
    section = parsed(config_text("postgresql://mlflow:p%40ss@db:5432/mlflow", "admin", 60))
    assert section["database_uri"] == "postgresql://mlflow:p%40ss@db:5432/mlflow"
    assert section.getint("auth_cache_ttl_seconds") == 60
    assert section.getint("auth_cache_max_size") > 0
    assert section["default_permission"] == "READ" and section["admin_username"] == "admin"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, AUTH_CACHE_TTL_S), ({"MLFLOW_AUTH_CACHE_TTL_S": "0"}, 0),
     ({"MLFLOW_AUTH_CACHE_TTL_S": " 300 "}, 300)],
)  # fmt: skip
def test_the_cache_lifetime_comes_from_the_environment(
    environ: dict[str, str], expected: int
) -> None:
    assert cache_ttl(environ) == expected


@pytest.mark.parametrize("value", ["-5", "1.5", "an hour"])
def test_a_cache_lifetime_that_is_not_whole_seconds_refuses_to_start(value: str) -> None:
    with pytest.raises(SystemExit, match="MLFLOW_AUTH_CACHE_TTL_S"):
        cache_ttl({"MLFLOW_AUTH_CACHE_TTL_S": value})
