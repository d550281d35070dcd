"""Runtime settings of the drift service: environment variables only (DRIFT_*)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.paths import ROOT
from services.api import predlog

Distance = Literal["wasserstein", "jensenshannon", "psi", "kl_div", "hellinger", "ed"]
PORT = 8200  # Prometheus scrapes it and Alertmanager's webhooks reach it here


class DriftSettings(BaseSettings):
    """Every knob has a default that suits the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFT_", env_file=ROOT / ".env", extra="ignore", env_ignore_empty=True
    )

    host: str = "127.0.0.1"
    port: int = PORT
    # The model services' log (the same URL as their SERVE_PREDICTION_LOG)
    prediction_log: str = predlog.DEFAULT_URL
    # Catalog keys to watch; empty: every model of the catalog
    models: list[str] = []
    # The window: the latest `window_rows` predictions of the last `window_s` seconds
    window_rows: int = Field(default=1000, ge=1)
    window_s: float = Field(default=24 * 3600, gt=0)
    # Fewer rows than this is an empty window: no verdict (distances on a handful are noise)
    min_rows: int = Field(default=200, ge=1)
    schedule_s: float = Field(default=300, ge=0)  # every model checked this often; 0: on demand
    # Evidently: a feature drifts when its distance reaches the threshold; the data set drifts
    # when at least drift_share of its features do. Distances only (not p-values), so a score
    # means the same at every window size and on every dashboard: higher is more drift
    num_method: Distance = "wasserstein"
    cat_method: Distance = "jensenshannon"
    threshold: float = Field(default=0.1, gt=0)
    drift_share: float = Field(default=0.5, gt=0, le=1)
    # Where the HTML reports, the last results and the retraining logs are kept
    state_dir: Path = ROOT / "run" / "drift"
    # Retraining on an Alertmanager webhook: the command (run in `workspace`, {model} filled
    # in); `register` gates the new version, so a worse model never becomes champion
    retrain: Literal["on", "off"] = "on"
    retrain_command: str = "dvc repro --force register@{model}"
    workspace: Path = ROOT
    retrain_timeout_s: float = Field(default=3600, gt=0)
    # Credentials (services.api.auth), as a token or the _file holding it: admin_token for every
    # route but the probes and /metrics; webhook_token for Alertmanager's POST /alerts*
    # (admin_token works there too). Routes needing one are refused while none is set
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    # The prediction log's retention, enforced here at each schedule turn (the model services
    # may not DELETE): rows older than log_retention_s and beyond the newest log_max_rows
    # are deleted in short batches; 0 keeps them forever
    log_retention_s: float = Field(default=30 * 24 * 3600, ge=0)
    log_max_rows: int = Field(default=1_000_000, ge=0)
    # The window's reader streams the log newest first and stops at window_rows records or
    # this much JSON, whichever comes first
    window_max_bytes: int = Field(default=predlog.WINDOW_MAX_BYTES, ge=1)
    # Performance on labelled traffic (the outcomes sent to the services' /feedback): the
    # predictions of the last performance_window_s seconds that have an outcome, the newest
    # performance_max_records of them; a version with fewer than performance_min_records
    # labelled gets no metric (its coverage and label delay are still reported)
    performance_window_s: float = Field(default=7 * 24 * 3600, gt=0)
    performance_min_records: int = Field(default=100, ge=1)
    performance_max_records: int = Field(default=50_000, ge=1)
    # Canary rollouts (POST /models/<key>/canary): the challenger's share of units steps
    # through canary_steps, each held canary_step_s at least, then it is promoted. At the end
    # of each step it is rolled back when its 5xx ratio is over the champion's by more than
    # canary_max_error_increase, its p99 latency over canary_latency_p99_s (the serving SLO:
    # 99% within 50 ms) and over 1.5 times the champion's (both from Prometheus at
    # prometheus_url), or its outcome metric significantly worse (services.drift.experiment:
    # information fraction = labelled records per arm / canary_records; no verdict under
    # canary_min_records). A canary that cannot be judged (Prometheus down, too few outcomes)
    # holds its step, and is rolled back after canary_timeout_s
    canary_steps: list[float] = [0.05, 0.2, 0.5]
    canary_step_s: float = Field(default=600, gt=0)
    canary_tick_s: float = Field(default=10, gt=0)
    canary_records: int = Field(default=1000, ge=1)
    canary_min_records: int = Field(default=100, ge=2)
    canary_max_error_increase: float = Field(default=0.01, ge=0)
    canary_latency_p99_s: float = Field(default=0.05, gt=0)
    canary_timeout_s: float = Field(default=24 * 3600, gt=0)
    prometheus_url: str = "http://127.0.0.1:9090"
    # Reading and pruning the log (Postgres: connecting, each statement, a lock wait): slower
    # is a failed run
    log_timeout_s: float = Field(default=predlog.READ_TIMEOUT_S, gt=0)
