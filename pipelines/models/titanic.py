"""Titanic survival: engineered features (title, family size, deck) inside the graph, then trees."""

from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.pipeline import Pipeline

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import preprocessor
from pipelines.flavors import sklearn as FLAVOR
from pipelines.flavors.onnx_ops import LinearCombination, to_float32

__all__ = ["FLAVOR", "build"]

# Honorifics in "Surname, Title. Given names": they carry sex, age and class at once.
TITLES = [
    "mr",
    "mrs",
    "miss",
    "master",
    "ms",
    "mlle",
    "mme",
    "dr",
    "rev",
    "col",
    "major",
    "capt",
    "countess",
    "lady",
    "sir",
    "don",
    "dona",
    "jonkheer",
]
DECKS = list("ABCDEFGT")  # first letter of each cabin number


def build(spec: ModelSpec) -> Pipeline:
    engineered = [
        (
            "title",
            CountVectorizer(vocabulary=TITLES, binary=True, token_pattern=r"(?a)\b\w+\b"),
            "name",
        ),
        (
            "deck",
            CountVectorizer(
                vocabulary=DECKS, binary=True, lowercase=False, token_pattern=r"(?a)[A-Z]"
            ),
            "cabin",
        ),
        ("family_size", LinearCombination(weights=(1.0, 1.0), bias=1.0), ["sibsp", "parch"]),
    ]
    return Pipeline(
        [
            ("features", preprocessor(spec, exclude=["name", "cabin"], extra=engineered)),
            ("float32", to_float32()),
            ("model", HistGradientBoostingClassifier(**spec.params)),
        ]
    )
