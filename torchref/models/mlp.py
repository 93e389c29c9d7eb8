"""The tutorial's ``NeuralNetwork``, with its attribute names (so state-dict keys match).

Mirrored by ``jaxnet/models/mlp.py``; ``torchref.model`` re-exports it.

``Flatten -> Linear(784, 512) -> ReLU -> Linear(512, 512) -> ReLU -> Linear(512, 10)``; the
hidden sizes and depth are arguments, the tutorial's are the defaults.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class NeuralNetwork(nn.Module):
    """State-dict keys: ``linear_relu_stack.{0,2,4}.{weight,bias}``, weights ``[out, in]``.

    Example:
        >>> model = NeuralNetwork()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (512, 512),
        num_classes: int = 10,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        sizes = (in_features, *hidden, num_classes)
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out, dtype=dtype), nn.ReLU()]
        self.linear_relu_stack = nn.Sequential(*layers[:-1])  # no ReLU after the last Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def activations(model: NeuralNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate output keyed by module path (``flatten``, ``linear_relu_stack.0``, ...),
    then the tutorial's ``nn.Softmax(dim=1)`` of the logits as ``softmax``."""
    out = {"flatten": model.flatten(x)}
    h = out["flatten"]
    for name, layer in model.linear_relu_stack.named_children():
        h = layer(h)
        out[f"linear_relu_stack.{name}"] = h
    out["softmax"] = nn.Softmax(dim=1)(h)
    return out


def from_config(fields: dict, dtype: torch.dtype | None = None) -> NeuralNetwork:
    """A fresh model of the given sizes (``in_features``, ``hidden``, ``num_classes``), from
    torch's global RNG: the builder jaxnet's registry calls."""
    return NeuralNetwork(fields["in_features"], fields["hidden"], fields["num_classes"], dtype=dtype)


def named_activations(
    model: NeuralNetwork, x: torch.Tensor, masks: dict | None = None
) -> dict[str, torch.Tensor]:
    """:func:`activations` (the MLP has no dropout to give masks to)."""
    return activations(model, x)
