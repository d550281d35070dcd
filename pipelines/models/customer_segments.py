"""Customer segments: K-Means on tenure, monthly charges and the number of services.

An RFM-style view of the telecom's customers: how long they have stayed (recency /
loyalty), what they pay each month (monetary) and how many services they take (breadth).
The services count is computed inside the graph from the raw service fields, the three
numbers are standardised, and K-Means runs with k chosen by silhouette (pipelines/estimators/
clustering.py). Churn is never an input: it is profiled per segment, for the model card
and the served answer.
"""

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from contract.catalog import ModelSpec
from pipelines.estimators.clustering import SilhouetteKMeans
from pipelines.flavors import sklearn as FLAVOR
from pipelines.flavors.onnx_ops import LinearCombination, to_float32

__all__ = ["FLAVOR", "build"]

# each service a customer takes counts 1; a second phone line counts once more
SERVICES = {
    "multiple_lines": {"No": 1.0, "Yes": 2.0},  # "No phone service": 0
    "internet_service": {"DSL": 1.0, "Fiber optic": 1.0},
    "online_security": {"Yes": 1.0},
    "online_backup": {"Yes": 1.0},
    "device_protection": {"Yes": 1.0},
    "tech_support": {"Yes": 1.0},
    "streaming_tv": {"Yes": 1.0},
    "streaming_movies": {"Yes": 1.0},
}


def services_count() -> Pipeline:
    """The number of services from the service fields: indicators, then a weighted sum."""
    indicators = OneHotEncoder(
        categories=[list(values) for values in SERVICES.values()],
        handle_unknown="ignore",
        sparse_output=False,
    )
    weights = tuple(w for values in SERVICES.values() for w in values.values())
    return Pipeline([("indicators", indicators), ("count", LinearCombination(weights))])


def build(spec: ModelSpec) -> Pipeline:
    features = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), ["tenure", "monthly_charges"]),
            ("services", services_count(), list(SERVICES)),
        ],
        sparse_threshold=0.0,
    )
    return Pipeline(
        [
            ("features", features),
            ("scale", StandardScaler()),
            ("float32", to_float32()),
            ("model", SilhouetteKMeans(**spec.params)),
        ]
    )
