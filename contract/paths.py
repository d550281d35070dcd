"""Where every stage reads and writes: the single place path constants live."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
HISTORY_NAME = "history.json"  # a network's per-epoch metrics, beside its weights
# the drift reference, beside model.onnx and in the registered run's artifacts alike
REFERENCE_ARTIFACT = "reference/reference.parquet"
INT8_DIR = "int8"  # beside model.onnx: the INT8 graph where it ships, and its report


def raw_data(key: str, root: Path = ROOT) -> Path:
    """The validated data set: as the package ships it, or Feast's point-in-time join."""
    return root / "data" / "raw" / key / "data.parquet"


def offline_dir(key: str, root: Path = ROOT) -> Path:
    """Feast-backed projects: the offline store's feature tables and the labelled entities."""
    return root / "data" / "raw" / key


def split_dir(key: str, root: Path = ROOT) -> Path:
    """Held-out split: train.parquet and test.parquet."""
    return root / "data" / "split" / key


def production_dir(key: str, root: Path = ROOT) -> Path:
    """snapshot@<key>: labelled production records, train.parquet (what may join training)
    and holdout.parquet (the newest: the gate's fresh window)."""
    return root / "data" / "production" / key


def snapshot_report(key: str, root: Path = ROOT) -> Path:
    """What snapshot@<key> exported: counts, time span, what it skipped."""
    return root / "reports" / "production" / f"{key}.json"


def model_dir(key: str, root: Path = ROOT) -> Path:
    """Native (framework) model: only the pipeline's own stages read it, serving never does."""
    return root / "models" / key


def onnx_model(key: str, root: Path = ROOT) -> Path:
    """The whole inference pipeline as one ONNX graph (FP32), checked against the native
    model; what is served beside the graph (a search's index) lies in the same folder."""
    return root / "artifacts" / key / "model.onnx"


def int8_model(key: str, root: Path = ROOT) -> Path:
    """The FP32 graph quantized to INT8 (pipelines/quantize.py), where the export stage
    shipped it; its report, quantization.json, lies beside it either way."""
    return onnx_model(key, root).parent / INT8_DIR / "model.onnx"


def reference_file(key: str, root: Path = ROOT) -> Path:
    """The drift service's reference of the graph served (contract/reference.py), made by
    the export stage and logged by register at the same path in the run's artifacts; in a
    folder of its own, not among the files served beside the graph."""
    return onnx_model(key, root).parent / REFERENCE_ARTIFACT


def served_model(key: str, root: Path = ROOT) -> Path:
    """The graph that is registered and served: the INT8 one where the export stage shipped
    it (its gate metric within the catalog entry's `int8.max_drop` of FP32's), else the FP32
    one. Export rewrites the whole folder, so an INT8 graph here is always the current one's."""
    int8 = int8_model(key, root)
    return int8 if int8.is_file() else onnx_model(key, root)


def metrics_file(key: str, root: Path = ROOT) -> Path:
    return root / "reports" / "metrics" / f"{key}.json"


def plots_dir(key: str, root: Path = ROOT) -> Path:
    return root / "reports" / "plots" / key


def registry_record(key: str, root: Path = ROOT) -> Path:
    """What the register stage did: version, alias, gate decision."""
    return root / "reports" / "registry" / f"{key}.json"
