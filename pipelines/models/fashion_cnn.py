"""Fashion-MNIST: a small CNN with batch norm, trained with flips and shifts."""

from torch import nn

from contract.catalog import ModelSpec
from pipelines.estimators.image_classifier import ImageClassifier
from pipelines.flavors import torch as FLAVOR

__all__ = ["FLAVOR", "build"]


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def build(spec: ModelSpec) -> ImageClassifier:
    """28x28 -> [conv, conv, pool] -> [conv, pool] -> dense -> class logits."""
    c1, c2 = spec.params["channels"]
    hidden, dropout = spec.params["hidden"], spec.params["dropout"]
    classes = len(spec.class_names)
    net = nn.Sequential(
        *_block(1, c1),
        *_block(c1, c1),
        nn.MaxPool2d(2),
        *_block(c1, c2),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(c2 * 7 * 7, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )
    return ImageClassifier(net, spec.params)
