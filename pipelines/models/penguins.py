"""Palmer penguins: species from bill, flipper, mass, island and sex (multi-class).

Median imputation and one-hot categories, standardised, then a multinomial logistic
regression: the species separate almost linearly on these measurements, and a linear model
keeps its probabilities calibrated on 344 birds where boosted trees would overfit.
"""

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from contract.catalog import ModelSpec
from pipelines.estimators.tabular import preprocessor
from pipelines.flavors import sklearn as FLAVOR
from pipelines.flavors.onnx_ops import to_float32

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Pipeline:
    return Pipeline(
        [
            ("features", preprocessor(spec, min_frequency=1)),
            ("scale", StandardScaler()),
            ("float32", to_float32()),
            ("model", LogisticRegression(**spec.params)),
        ]
    )
