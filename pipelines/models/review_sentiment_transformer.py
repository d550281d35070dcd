"""Review sentiment by a fine-tuned transformer: all-MiniLM-L6-v2 with a classification head,
every layer trained on the same reviews and split as `review_sentiment` (TF-IDF + logistic
regression), which it is compared with (README, "The models")."""

from contract.catalog import ModelSpec
from pipelines.estimators.text_transformer import TextTransformer
from pipelines.flavors import transformer as FLAVOR
from pipelines.flavors.weights import minilm_dir

__all__ = ["FLAVOR", "build"]


def build(spec: ModelSpec) -> TextTransformer:
    return TextTransformer(minilm_dir(), len(spec.class_names), spec.params)
