"""An image model's embedding of each picture, for the drift view (contract/reference.py):
the vision estimators' shared part, beside the torch flavor that exports it.

A network's pooled features (the classifier's last hidden layer, a U-Net's bottleneck, a
detector's deepest backbone map, averaged over the picture) are projected on their first
EMBEDDING_DIMS principal components over the training pictures. The projection is a
module with buffers, so it is saved with the weights and exported inside the graph: the
service logs each picture's coordinates, and the drift report compares their
distributions with those of the training sample. Pictures unlike the training ones (other
scenes, other garments, other cameras) move the coordinates even where brightness and
contrast stay the same.
"""

from collections.abc import Callable

import torch
from torch import nn

from contract.catalog import EMBEDDING_DIMS

SAMPLE = 10_000  # training pictures the axes are fitted on (plenty for a few axes)
CHUNK = 500  # pictures a forward pass takes at once (bounds its activations)


class Projection(nn.Module):
    """[N, features] -> [N, EMBEDDING_DIMS]: the centred features on their principal axes."""

    center: torch.Tensor
    axes: torch.Tensor

    def __init__(self, features: int, dims: int = EMBEDDING_DIMS) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(features))
        self.register_buffer("axes", torch.zeros(dims, features))

    def fit(self, pooled: torch.Tensor) -> "Projection":
        """The axes of the largest variance of `pooled` [N, features] (float64 SVD, each
        axis signed so that its largest loading is positive: the same features give the
        same axes)."""
        data = pooled.detach().to(torch.float64)
        center = data.mean(dim=0)
        _, _, vt = torch.linalg.svd(data - center, full_matrices=False)
        axes = torch.zeros(self.axes.shape, dtype=torch.float64)
        found = vt[: len(axes)]
        signs = torch.sign(found.gather(1, found.abs().argmax(dim=1, keepdim=True)))
        axes[: len(found)] = found * torch.where(signs == 0, 1.0, signs)
        self.center.copy_(center.to(self.center.dtype))
        self.axes.copy_(axes.to(self.axes.dtype))
        return self

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.center) @ self.axes.T


def fitted(
    projection: Projection, encode: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor
) -> Projection:
    """`projection` fitted on the pooled features `encode` gives of the first SAMPLE of
    `inputs` (the training pictures, in the order training drew them), CHUNK at a time, with
    no gradient."""
    with torch.no_grad():
        pooled = [encode(inputs[i : i + CHUNK]) for i in range(0, min(len(inputs), SAMPLE), CHUNK)]
    return projection.fit(torch.cat(pooled))
