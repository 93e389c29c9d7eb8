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
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def capture(
    model: nn.Module, masks: dict[str, torch.Tensor] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each submodule's tensor output under its path while the block runs.

    A module called twice records ``name`` and ``name#2``; outputs that are pytrees are
    recorded leaf by leaf (:func:`named_leaves`).
    """
    outputs: dict[str, torch.Tensor] = {}
    masks = masks or {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output):
            if name in masks and isinstance(module, nn.Dropout):
                output = inputs[0] * (masks[name].to(inputs[0].dtype) / (1 - module.p))
            for leaf, value in named_leaves(name, output).items():
                key, n = leaf, 1
                while key in outputs:
                    n += 1
                    key = f"{leaf}#{n}"
                # a copy: an in-place op after the module (ReLU(inplace=True)) would change it
                outputs[key] = value.detach().clone()
            return output

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def activations(
    model: nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor] | None = None, **kwargs
) -> dict[str, torch.Tensor]:
    """Every submodule's output on ``x`` and the model's own, as ``output`` (no gradient).

    ``x`` may be a tuple (positional inputs) and ``kwargs`` keyword inputs."""
    args = x if isinstance(x, tuple) else (x,)
    with torch.no_grad(), capture(model, masks) as outputs:
        final = model(*args, **kwargs)
    return outputs | named_leaves("output", final)


def named_leaves(name: str, output) -> dict[str, torch.Tensor]:
    """A module's output as named tensors: a tensor is ``name``; a tuple's first element is
    ``name`` and the others ``name.1``, ``name.2``...; a dict's (or a dataclass-like output
    object's) fields are ``name.key``. ``None`` (``need_weights=False``) is left out.

    The same names as ``jaxnet.capture.named_leaves`` gives an NNX module's output.
    """
    if isinstance(output, torch.Tensor):
        return {name: output}
    if isinstance(output, tuple | list):
        out: dict[str, torch.Tensor] = {}
        for i, item in enumerate(output):
            out |= named_leaves(name if i == 0 else f"{name}.{i}", item)
        return out
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        output = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if isinstance(output, dict):
        out = {}
        for key, item in output.items():
            out |= named_leaves(f"{name}.{key}", item)
        return out
    return {}


# Module types whose parameters jaxnet knows how to place in an NNX port (jaxnet.rules).
_KINDS = (
    (nn.MultiheadAttention, "mha"),
    (nn.Linear, "linear"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv_transpose"),
    (nn.modules.batchnorm._BatchNorm, "batchnorm"),
    (nn.LayerNorm, "layernorm"),
    (nn.GroupNorm, "groupnorm"),
    (nn.Embedding, "embedding"),
)


def module_kinds(model: nn.Module) -> dict[str, str]:
    """``{path: kind}`` of every module that holds parameters or buffers of its own: a kind of
    ``jaxnet.rules`` (``linear``, ``conv``, ``batchnorm``, ``mha``...) or ``"other:<Class>"``.
    Modules inside an ``nn.MultiheadAttention`` (its ``out_proj``) belong to it."""
    kinds: dict[str, str] = {}
    rms = getattr(nn, "RMSNorm", None)
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p, k in kinds.items() if k == "mha"):
            continue
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if not own and not isinstance(module, nn.MultiheadAttention):
            continue
        kind = next((k for cls, k in _KINDS if isinstance(module, cls)), None)
        if kind is None and rms is not None and isinstance(module, rms):
            kind = "rmsnorm"
        kinds[path] = kind or f"other:{type(module).__name__}"
    return kinds


def persistent_buffers(model: nn.Module) -> list[str]:
    """State-dict keys of the buffers (running statistics), in order; non-persistent ones
    (a causal mask) are constants of the module, not state."""
    params = {k for k, _ in model.named_parameters()}
    return [k for k in model.state_dict() if k not in params]


def dropout_rates(model: nn.Module) -> dict[str, float]:
    """``{path: p}`` of the model's ``nn.Dropout`` modules."""
    return {name: float(m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
