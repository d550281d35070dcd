"""Runtime settings: environment variables only (ML settings live in params.yaml)."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.paths import ROOT


class Settings(BaseSettings):
    """Documented in .env.example."""

    model_config = SettingsConfigDict(env_file=ROOT / ".env", extra="ignore", env_ignore_empty=True)

    # SQLite + local artifacts under the repo unless told otherwise (e.g. postgresql://...)
    mlflow_tracking_uri: str = f"sqlite:///{ROOT / 'mlruns' / 'mlflow.db'}"
    # Where new experiments keep their artifacts; empty means <repo>/mlruns/artifacts
    mlflow_artifact_root: str = ""
    # The prediction log (with the outcomes sent back) that snapshot@<key> exports labelled
    # records from: the services' SERVE_PREDICTION_LOG (relative paths: from the workspace)
    prediction_log: str = "sqlite:///run/predictions.sqlite"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or (ROOT / "mlruns" / "artifacts").as_uri()


@lru_cache
def get_settings() -> Settings:
    return Settings()
