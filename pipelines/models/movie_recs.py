"""Movie recommendations: matrix factorisation of MovieLens ratings, popularity for cold start.

Two factorisations of the same ratings (pipelines/estimators/factorization.py): a biased one
predicts the rating a user would give (judged by RMSE on held-out ratings), an implicit one
ranks what the user is likely to watch and like (judged by precision and recall at 10
against the popularity baseline). A user's top-k list is ranked by the second and shows
the first's predicted rating; a user the model has never seen gets the most-rated movies.
"""

from contract.catalog import ModelSpec
from pipelines.estimators.factorization import Factorization
from pipelines.flavors import factors as FLAVOR

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> Factorization:
    return Factorization(**spec.params)
