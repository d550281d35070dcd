"""What several task kinds share: rounding, decisions, class probabilities' metrics."""

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from contract.catalog import ModelSpec

# A plot a task asks for: a drawing function of pipelines/plots.py and its data arguments
# (the model's key and the file's path follow); the task layer never imports matplotlib
Plot = tuple[str, tuple[Any, ...]]

# The drift view of a served answer (each task's `answered`; contract/reference.py): its
# score (P(positive), P(top class), the value, the anomaly score, ...), its label where the
# task serves one, and the task's further numerical columns (OUTPUT_VIEW)
SCORE = "prediction"
LABEL = "predicted_label"


class Served(Protocol):
    """What a task's `format` reads of a loaded model besides its outputs."""

    @property
    def spec(self) -> "ModelSpec": ...

    @property
    def threshold(self) -> float | None: ...

    @property
    def segments(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ServedGraph:
    """A `Served` read off an exported graph: what export wrote into its metadata
    (pipelines/export.py `describe`). The service's loaded model and the registered drift
    reference both format answers with it."""

    spec: "ModelSpec"
    metadata: dict[str, str]

    @property
    def threshold(self) -> float | None:
        """The decision threshold the graph's label applies (tuned classifiers, detectors)."""
        value = self.metadata.get("threshold")
        return None if value is None else float(value)

    @property
    def segments(self) -> list[dict[str, Any]]:
        """A segmentation's profile of each segment, in label order."""
        return list(json.loads(self.metadata["segments"]))


def rounded(result: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in result.items()}


def decided(predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class indices: P(positive) >= threshold when there is one, else the most probable;
    for anomaly scores, 1 above the threshold."""
    if predicted.ndim == 1:  # anomaly scores
        assert threshold is not None
        return (predicted > threshold).astype(np.int64)
    if threshold is None:
        return np.asarray(predicted.argmax(axis=1))
    return (predicted[:, 1] >= threshold).astype(np.int64)


def class_index(y: Any, names: list[str]) -> np.ndarray:
    """Labels as class indices: names mapped in label order, numbers as they are."""
    import pandas as pd

    if y.dtype == object or isinstance(y.dtype, pd.StringDtype):  # class names
        return np.asarray(y.map({name: i for i, name in enumerate(names)}).to_numpy(np.int64))
    return np.asarray(y.to_numpy(dtype=np.int64))


def two_valued(spec: "ModelSpec") -> Any:
    """A target that is its positive value or another one (pandera column)."""
    import pandera.pandas as pa

    return pa.Column(
        checks=[
            pa.Check(lambda s: s.nunique() == 2, error="is not two-valued"),
            pa.Check(
                lambda s: (s == spec.target.positive).any(),
                error=f"never takes the positive value {spec.target.positive!r}",
            ),
        ],
        nullable=False,
    )


def probabilities_score(
    y: np.ndarray, predicted: np.ndarray, threshold: float | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(accuracy and log loss, the decided labels, the renormalised probabilities)."""
    from sklearn import metrics as m  # scoring only: the service never imports it

    labels = decided(predicted, threshold)
    predicted = predicted / predicted.sum(axis=1, keepdims=True)  # float32 softmax: 1 +- 1e-7
    result = {
        "accuracy": m.accuracy_score(y, labels),
        "log_loss": m.log_loss(y, predicted, labels=range(predicted.shape[1])),
    }
    return result, labels, predicted


def labels_from(result: dict[str, np.ndarray], names: list[str]) -> list[str]:
    return [names[int(i)] for i in result["label"].reshape(-1)]


def series_checks(length: int, low: float | None, high: float | None) -> list[Any]:
    """Each cell a sequence of `length` finite numbers within [low, high] (pandera checks)."""
    import pandera.pandas as pa

    def bounded(values: Any) -> bool:
        array = np.asarray(values, dtype=np.float64)
        return bool(
            array.shape == (length,)
            and np.isfinite(array).all()
            and (low is None or array.min() >= low)
            and (high is None or array.max() <= high)
        )

    bounds = "".join(f" {op} {v:g}" for op, v in ((">=", low), ("<=", high)) if v is not None)
    return [pa.Check(bounded, element_wise=True, error=f"is not {length} finite numbers{bounds}")]


def regression_metrics(spec: "ModelSpec", y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as m  # scoring only: the service never imports it

    result = {
        "rmse": m.root_mean_squared_error(y, predicted),
        "mae": m.mean_absolute_error(y, predicted),
        "mape": m.mean_absolute_percentage_error(y, predicted),
        "r2": m.r2_score(y, predicted),
    }
    if spec.target.transform == "log":  # the scale the model is fitted and judged on
        result |= {
            "rmse_log": m.root_mean_squared_error(np.log(y), np.log(predicted)),
            "r2_log": m.r2_score(np.log(y), np.log(predicted)),
        }
    return rounded(result)


def no_payload_change(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return records


WHOLE_GRAPH = (
    "The artifact is the whole inference pipeline as one ONNX graph (preprocessing "
    "included), checked\nagainst the native model on every test row at export."
)


def served_as_is(session: Any, directory: Any) -> Any:
    """The graph's session is what is served (no corpus or index beside it), behind its
    tokenizer where it is a transformer's (token ids in: contract/tokens.py)."""
    from contract.tokens import TokenizedSession, tokenized

    return TokenizedSession(session) if tokenized(session) else session


def output_as_native(outputs: dict[str, np.ndarray], name: str, vector: bool) -> np.ndarray:
    """A graph output as the native prediction: float64, [N] where `vector` ([N, 1] in the
    graph)."""
    values = np.asarray(outputs[name], dtype=np.float64)
    return values.reshape(len(values)) if vector else values


def decisive_probabilities(
    predicted: np.ndarray, threshold: float | None, tolerance: float
) -> np.ndarray:
    """Rows whose decision float32 rounding cannot flip: P(positive) or the top two classes
    farther apart than `tolerance` from the threshold or each other."""
    if threshold is not None:
        positive = predicted if predicted.ndim == 1 else predicted[:, 1]  # anomaly scores: [N]
        return np.asarray(np.abs(positive - threshold) > tolerance)
    top = np.sort(predicted, axis=1)
    return np.asarray(top[:, -1] - top[:, -2] > tolerance)


def no_margin(predicted: np.ndarray, threshold: float | None, tolerance: float) -> np.ndarray:
    raise TypeError("this task serves no labels")


def require_positive(spec: "ModelSpec") -> None:
    """A task judged against one value of the target needs to be told which."""
    if spec.target.positive is None:
        article = "an" if spec.task[0] in "aeiou" else "a"
        raise ValueError(f"{article} {spec.task} task needs target.positive")


def positive_flags(y: Any, spec: "ModelSpec") -> np.ndarray:
    """1 where the target is its positive value, else 0."""
    return np.asarray((y == spec.target.positive).to_numpy(dtype=np.int64))


def no_class_names(spec: "ModelSpec") -> list[str]:
    return []


def no_labels(predicted: np.ndarray, threshold: float | None) -> np.ndarray:
    raise TypeError("this task serves no labels: values, series or ranked results")


def whole_graph_card(spec: "ModelSpec") -> dict[str, str]:
    """The model card's notes of a task without its own: the artifact is one graph."""
    return {"target": "", "artifact": WHOLE_GRAPH}
