"""Where every stage reads and writes: the single place path constants live."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
HISTORY_NAME = "history.json"  # a network's per-epoch metrics, beside its weights


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
    """The whole inference pipeline as one ONNX graph: what gets registered and served."""
    return root / "artifacts" / key / "model.onnx"


def metrics_file(key: str, root: Path = ROOT) -> Path:
    return root / "reports" / "metrics" / f"{key}.json"


def plots_dir(key: str, root: Path = ROOT) -> Path:
    return root / "reports" / "plots" / key


def registry_record(key: str, root: Path = ROOT) -> Path:
    """What the register stage did: version, alias, gate decision."""
    return root / "reports" / "registry" / f"{key}.json"
