"""What several task kinds share about ground truth that comes back after serving.

A served prediction's true outcome arrives later through the service's `/feedback` (a
label, a value, a series, the items a user chose). Each task says what one outcome looks
like (`outcome`: a pydantic type, so the service's 400 names what was expected) and how
its metrics are computed over logged predictions and their outcomes (`performance`): the
same `score` the evaluate stage reports, so a live metric and the registered one compare.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, StrictInt, StrictStr

from contract.tasks.common import decided

# the items of one ranked outcome (chosen or relevant ids): a bound on what one call stores
MAX_ITEMS = 1000
MAX_ID_LENGTH = 200
Score = Callable[..., dict[str, float]]


def label_outcome(names: list[str]) -> Any:
    """A class: its name as the service answers it, or its index in label order (0/1 for a
    binary target); stored as the name."""

    def named(value: str | int) -> str:
        return names[value] if isinstance(value, int) else value

    by_name = Literal[tuple(names)]  # type: ignore[valid-type]
    by_index = Literal[tuple(range(len(names)))]  # type: ignore[valid-type]
    return Annotated[by_name | by_index, AfterValidator(named)]


def value_outcome(positive: bool) -> Any:
    """A finite number (positive where the model is fitted on its logarithm)."""
    return Annotated[float, Field(allow_inf_nan=False, gt=0 if positive else None)]


def series_outcome(length: int) -> Any:
    """The observed series over the horizon: `length` finite numbers."""
    step = Annotated[float, Field(allow_inf_nan=False)]
    return Annotated[list[step], Field(min_length=length, max_length=length)]


def items_outcome() -> Any:
    """Item or document ids (the ones a user chose, or that are relevant), 1..MAX_ITEMS: a
    64-bit integer or a string of at most MAX_ID_LENGTH characters, as ids are stored."""
    number = Annotated[StrictInt, Field(ge=-(2**63), lt=2**63)]
    text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
    return Annotated[list[number | text], Field(min_length=1, max_length=MAX_ITEMS)]


def class_indices(outcomes: Sequence[Any], names: list[str]) -> np.ndarray:
    """Outcomes (names, as stored, or indices) as class indices."""
    order: dict[Any, int] = {name: i for i, name in enumerate(names)}
    order |= {i: i for i in range(len(names))}
    return np.asarray([order[o] for o in outcomes], dtype=np.int64)


def labelled_score(
    score: Score, spec: Any, y: np.ndarray, predicted: np.ndarray, threshold: float | None
) -> dict[str, float]:
    """A classifier's `score` over a labelled window. With one class only, the ranking
    metrics (AUC, log loss, F1) are undefined: only the share decided right is."""
    if len(np.unique(y)) < 2:
        return {"accuracy": round(float((decided(predicted, threshold) == y).mean()), 6)}
    return quietly(score, spec, y, predicted, threshold)


def quietly(
    score: Score, spec: Any, y: np.ndarray, predicted: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """`score` over a window of outcomes: what a small window leaves undefined (R² of one
    value, a class never predicted) is left out rather than warned about; a threshold is a
    setting, not a metric."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = score(spec, y, predicted, threshold)
    return {k: v for k, v in result.items() if k != "threshold" and np.isfinite(v)}


def served_threshold(positive: np.ndarray, flagged: np.ndarray) -> float:
    """A threshold that reproduces the served decisions (`flagged`: P(positive) >= the
    model's own threshold, which the log does not carry): the least flagged probability,
    or past every probability where none was flagged."""
    if flagged.any():
        return float(positive[flagged].min())
    return float(np.nextafter(positive.max(initial=1.0), np.inf))


def at_k(
    ranked: Sequence[list[str]], wanted: Sequence[Any], k: int, prefix: str = ""
) -> dict[str, float]:
    """precision@k, recall@k, hit rate@k and MRR of ranked id lists against the wanted ids,
    named with `prefix` where the plain names mean something else in the task's metrics."""
    precision, recall, hits, reciprocal = [], [], [], []
    for ids, chosen in zip(ranked, wanted, strict=True):
        good = {str(item) for item in chosen}
        top = ids[:k]
        found = [i for i, item in enumerate(top) if item in good]
        precision.append(len(found) / k)
        recall.append(len(found) / len(good))
        hits.append(bool(found))
        reciprocal.append(1 / (found[0] + 1) if found else 0.0)
    return {
        f"{prefix}precision_at_{k}": round(float(np.mean(precision)), 6),
        f"{prefix}recall_at_{k}": round(float(np.mean(recall)), 6),
        f"{prefix}hit_rate_at_{k}": round(float(np.mean(hits)), 6),
        f"{prefix}mrr": round(float(np.mean(reciprocal)), 6),
    }


def named_outcomes(indices: np.ndarray, names: list[str]) -> list[str]:
    """Encoded targets (class indices) as the class names /feedback stores."""
    return [names[int(i)] for i in indices]


def item_outcomes(frame: Any, spec: Any) -> list[list[Any]]:
    """Each held-out row's own item (`target.item`) as the one item wanted."""
    return [[item] for item in frame[spec.target.item].tolist()]


def label_targets(
    outcomes: Sequence[Any], names: list[str], seen: Any, encode: Callable[[Any], np.ndarray]
) -> Any:
    """Stored outcomes (class names) as the target column codes them: for each class, the
    value of `seen` (the train split's target column) that `encode`s to it, the most
    frequent where several do (a binary target's negative is any value but the positive).
    ValueError naming a class the column never holds: there is no coding for it."""
    import pandas as pd

    coding: dict[int, Any] = {}
    for value in seen.value_counts().index[::-1]:  # the most frequent is set last
        coding[int(encode(pd.Series([value], dtype=seen.dtype))[0])] = value
    indices = class_indices(outcomes, names)
    missing = sorted({names[i] for i in set(indices.tolist()) - set(coding)})
    if missing:
        raise ValueError(f"the train split's target never holds the classes {missing}")
    return pd.Series([coding[int(i)] for i in indices], dtype=seen.dtype)


def class_true_outcomes(frame: Any, spec: Any) -> list[str]:
    """Held-out rows' targets as /feedback takes them: the class names of the target
    column as the entry's task codes it (the load test, the loop demo)."""
    kind = spec.task_kind
    indices = kind.encode_target(frame[spec.target.column], spec)
    return named_outcomes(indices, kind.class_names(spec))


def class_targets(outcomes: Sequence[Any], spec: Any, seen: Any) -> Any:
    """Stored outcomes (class names) as the target column codes them, as the entry's task
    encodes it: a class name or index, or a binary target's positive value and the
    negative value the train split holds most."""
    kind = spec.task_kind
    return label_targets(
        outcomes, kind.class_names(spec), seen, lambda y: kind.encode_target(y, spec)
    )


def value_targets(outcomes: Sequence[Any], spec: Any, seen: Any) -> Any:
    """Stored outcomes (numbers) as the target column: floats."""
    import pandas as pd

    return pd.Series(list(outcomes), dtype="float64")


def no_targets(outcomes: Sequence[Any], spec: Any, seen: Any) -> None:
    """A task whose training does not take outcomes back (unsupervised, or ids not rows)."""
    return None


# Evidently's view of a labelled window (the drift service's performance report): the
# frame, its DataDefinition and the preset. Evidently is imported when one is built: the
# model services import this module, and never build one.
View = tuple[Any, Any, Any]


def binary_view(
    names: list[str], positive: np.ndarray, flagged: np.ndarray, outcomes: Sequence[Any]
) -> View:
    """P(positive) against the outcomes, decided at the served threshold."""
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition
    from evidently.presets import ClassificationPreset

    target = [names[i] for i in class_indices(outcomes, names)]
    frame = pd.DataFrame({"target": target, "prediction": positive})
    kind = BinaryClassification(target="target", prediction_probas="prediction", pos_label=names[1])
    definition = DataDefinition(
        classification=[kind], categorical_columns=["target"], numerical_columns=["prediction"]
    )
    threshold = served_threshold(positive, flagged)
    return frame, definition, ClassificationPreset(probas_threshold=min(threshold, 1.0))


def labels_view(names: list[str], predicted: Sequence[str], outcomes: Sequence[Any]) -> View:
    """The served labels against the outcomes (class names); two classes are a binary
    decision (the second one positive), which Evidently's multiclass view cannot take."""
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification
    from evidently.presets import ClassificationPreset

    target = [names[i] for i in class_indices(outcomes, names)]
    frame = pd.DataFrame({"target": target, "prediction": list(predicted)})
    kind: Any = MulticlassClassification(target="target", prediction_labels="prediction")
    if len(names) == 2:
        kind = BinaryClassification(
            target="target", prediction_labels="prediction", pos_label=names[1]
        )
    definition = DataDefinition(classification=[kind], categorical_columns=["target", "prediction"])
    return frame, definition, ClassificationPreset()


def values_view(predicted: Sequence[float], outcomes: Sequence[Any]) -> View:
    """The served values against the true ones."""
    import pandas as pd
    from evidently import DataDefinition, Regression
    from evidently.presets import RegressionPreset

    frame = pd.DataFrame(
        {
            "target": np.asarray(outcomes, dtype=np.float64),
            "prediction": np.asarray(predicted, dtype=np.float64),
        }
    )
    definition = DataDefinition(
        regression=[Regression(target="target", prediction="prediction")],
        numerical_columns=["target", "prediction"],
    )
    return frame, definition, RegressionPreset()


def no_view(spec: Any, predictions: Sequence[Any], outcomes: Sequence[Any]) -> None:
    """No Evidently preset fits the task's outcomes (sets of ids, series, segments)."""
    return None


def no_outcome(spec: Any) -> None:
    """A task with no ground truth to send back (segments are found, not known)."""
    return None


def no_outcomes(frame: Any, spec: Any) -> list[Any]:
    return []


def no_performance(
    spec: Any, predictions: Sequence[Any], outcomes: Sequence[Any]
) -> dict[str, float]:
    return {}
