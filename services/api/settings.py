"""Runtime settings of a model service: environment variables only (documented in .env.example)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.paths import ROOT
from services.api import predlog


class ServeSettings(BaseSettings):
    """One service = one catalog key. Every knob has a production-sane default."""

    model_config = SettingsConfigDict(
        env_prefix="SERVE_", env_file=ROOT / ".env", extra="ignore", env_ignore_empty=True
    )

    model: str = ""  # catalog key (params.yaml models:); the CLI sets it
    host: str = "127.0.0.1"
    port: int = 8100
    workers: int = Field(default=1, ge=1)
    # Where downloaded models are kept with their checksums, so a restart needs no registry
    cache_dir: Path = ROOT / ".serving-cache"
    max_records: int = Field(default=1000, ge=1)  # records per /predict request; more is a 413
    max_body_bytes: int = Field(default=16 * 2**20, ge=1024)  # larger bodies are a 413
    max_concurrency: int = Field(default=64, ge=1)  # in-flight requests per worker; more is a 429
    # Bytes of request bodies a worker holds at once (at least max_body_bytes); more is a 503
    max_body_bytes_in_flight: int = Field(default=64 * 2**20, ge=1024)
    timeout_s: float = Field(default=10.0, gt=0)  # inference slower than this is a 504
    # A request that waited longer than this before the service could start on it (since the
    # proxy's X-Request-Start, or since it reached the worker), or a batch that waited this
    # long in the model's inference line (or its p99 objective, where longer: a recording's
    # 5 s), is shed: a fast 503 with Retry-After, no work done for a client that is likely
    # gone (0: never)
    queue_timeout_s: float = Field(default=0.25, ge=0)
    # Idle keep-alive connections stay open this long: longer than the proxy keeps its own
    # idle upstream connections (60 s), so the service never closes one the proxy reuses
    keepalive_s: float = Field(default=75.0, gt=0)
    # Batches up to this size run on the event loop (no thread hop); larger ones in the
    # worker's inference threads, this many (ONNX Runtime runs each on one core: two 1000-row
    # batches at once in two threads on one core took twice as long each as one after the
    # other, the cache thrashed; a batch that waits in line is cancelled at the timeout)
    inline_max_records: int = Field(default=16, ge=0)
    inference_threads: int = Field(default=1, ge=1, le=64)
    # A graph that reads text runs a large batch in chunks of this many records, sorted by
    # length (each chunk pads to its own longest text: LoadedModel.predict); 0: at once
    inference_chunk: int = Field(default=128, ge=0)
    challenger_mode: Literal["off", "split", "shadow"] = "off"
    challenger_share: float = Field(
        default=0.1, ge=0, le=1
    )  # split: share of requests to @challenger
    reload_interval_s: float = Field(
        default=60.0, ge=0
    )  # poll the registry for alias moves; 0 = never
    registry_timeout_s: float = Field(default=5.0, gt=0)  # an unreachable registry fails this fast
    # Every answered prediction is committed here before its response is sent (api.predlog):
    # sqlite:///<path> (relative to the project root), postgresql://..., or off
    prediction_log: str = predlog.DEFAULT_URL
    # Feast-backed models: the project root whose feature_repo/ (and the online store it
    # names) entity-keyed requests read; FEAST_FS_YAML_FILE_PATH picks the production store
    feature_root: Path = ROOT
    # `bentoml serve`: services.bento's tuning and services.api.bentoml_fix (false: stock BentoML)
    bentoml_tuned: bool = True
    graceful_timeout_s: float = Field(
        default=30.0, gt=0
    )  # SIGTERM: wait this long for in-flight work
    # Credentials (services.api.auth): bearer tokens, comma-separated, or the _file holding them
    # one per line (a mounted secret). Inference is open unless api_keys are set; POST
    # /admin/reload needs admin_token (refused while none is set)
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    # POST /feedback (true outcomes of logged predictions) needs feedback_token (refused while
    # none is set): what comes back trains the next version, so not every caller may send it
    feedback_token: SecretStr | None = None
    feedback_token_file: Path | None = None
    # Bounds of the prediction log: a request's inputs + outputs over max_bytes of JSON keep
    # their outputs, the inputs become {"_truncated": <bytes>} per record (0: no cap); a commit
    # (Postgres: connecting, the statement, a lock wait) slower than timeout_s is a 503
    prediction_log_max_bytes: int = Field(default=predlog.MAX_ROW_BYTES, ge=0)
    prediction_log_timeout_s: float = Field(default=predlog.WRITE_TIMEOUT_S, gt=0)

    @model_validator(mode="after")
    def _a_body_fits_the_budget(self) -> "ServeSettings":
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                f"SERVE_MAX_BODY_BYTES_IN_FLIGHT ({self.max_body_bytes_in_flight}) is under "
                f"SERVE_MAX_BODY_BYTES ({self.max_body_bytes}): no body that large would ever fit"
            )
        return self
