"""Shared building blocks for tabular catalog modules."""

from collections.abc import Iterable, Sequence
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from contract.catalog import ModelSpec
from pipelines.flavors.onnx_ops import to_float32
from pipelines.schema import NUMERIC


def columns(spec: ModelSpec, kinds: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    skip = set(exclude)
    return [n for n, f in spec.fields.items() if f.type in set(kinds) and n not in skip]


def preprocessor(
    spec: ModelSpec,
    exclude: Iterable[str] = (),
    min_frequency: int = 10,
    extra: Sequence[tuple[str, Any, Any]] = (),
) -> ColumnTransformer:
    """Median-imputed numbers and one-hot categories (rare ones pooled, unknown ones ignored)."""
    steps: list[tuple[str, Any, Any]] = [
        ("num", SimpleImputer(strategy="median"), columns(spec, NUMERIC, exclude)),
        (
            "cat",
            OneHotEncoder(
                handle_unknown="ignore", min_frequency=min_frequency, sparse_output=False
            ),
            columns(spec, ["category"], exclude),
        ),
    ]
    return ColumnTransformer([*steps, *extra], sparse_threshold=0.0)


def threshold_tuned_trees(
    spec: ModelSpec, params: dict[str, Any], scoring: Any, min_frequency: int = 10
) -> Pipeline:
    """Class-weighted boosted trees whose decision threshold maximises `scoring`.

    The threshold is chosen by stratified cross-validation on the training split
    (`threshold_folds` in `params`, popped) and exported inside the graph, so the served
    label is the tuned decision. The rest of `params` goes to the trees.
    """
    params = dict(params)
    folds = params.pop("threshold_folds")
    trees = HistGradientBoostingClassifier(class_weight="balanced", **params)
    tuned = TunedThresholdClassifierCV(
        trees,
        scoring=scoring,
        cv=StratifiedKFold(folds, shuffle=True, random_state=params["random_state"]),
        random_state=params["random_state"],
    )
    return Pipeline(
        [
            ("features", preprocessor(spec, min_frequency=min_frequency)),
            ("float32", to_float32()),
            ("model", tuned),
        ]
    )
