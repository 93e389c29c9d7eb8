"""Every named submodule's output, by forward hooks, for any ``nn.Module``.

``nn.Dropout`` modules can be handed their masks (``{module path: 0/1 tensor}``): the hook
replaces the module's output by ``input * (mask / (1 - p))``, which is how torch applies its
own draw, so two frameworks can be compared in train mode on the same masks.

Example:
    >>> from torchref import NeuralNetwork
    >>> model = NeuralNetwork()
    >>> with capture(model) as outputs:
    ...     logits = model(torch.zeros(2, 1, 28, 28))
    >>> sorted(outputs)[:3]
    ['flatten', 'linear_relu_stack', 'linear_relu_stack.0']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def capture(
    model: nn.Module, masks: dict[str, torch.Tensor] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each submodule's tensor output under its path while the block runs.

    A module called twice records ``name`` and ``name#2``; outputs that are not one tensor
    (tuples, dicts) are not recorded.
    """
    outputs: dict[str, torch.Tensor] = {}
    masks = masks or {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output):
            if name in masks and isinstance(module, nn.Dropout):
                output = inputs[0] * (masks[name].to(inputs[0].dtype) / (1 - module.p))
            if isinstance(output, torch.Tensor):
                key, n = name, 1
                while key in outputs:
                    n += 1
                    key = f"{name}#{n}"
                outputs[key] = output
            return output

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def activations(
    model: nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Every submodule's output on ``x`` and the model's own, as ``output`` (no gradient)."""
    with torch.no_grad(), capture(model, masks) as outputs:
        final = model(x)
    return outputs | {"output": final}


def dropout_rates(model: nn.Module) -> dict[str, float]:
    """``{path: p}`` of the model's ``nn.Dropout`` modules."""
    return {name: float(m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
