"""How a Flax NNX port's parameters and activations line up with its torch module's.

Framework-free: the rules take numpy arrays, and give numpy arrays; JAX arrays they move as
they are, on their own device, and give JAX arrays. A 784x512 kernel's transpose took numpy
1.2-2.4 ms here and XLA 0.2-0.6 ms (docs/parity-layout-ab-cpu.md), and a parity run reads
every state it compares (:func:`jaxnet.model.to_torch_layout`).

The same numbers sit in another place on each side, by layer kind::

    torch                             Flax NNX
    Linear.weight   [out, in]         Linear.kernel  [in, out]          transposed
    Conv2d.weight   [O, I, kh, kw]    Conv.kernel    [kh, kw, I, O]     OIHW <-> HWIO
    Conv1d.weight   [O, I, k]         Conv.kernel    [k, I, O]
    LayerNorm.weight, Embedding.weight   LayerNorm.scale, Embed.embedding   as is
    feature maps    [N, C, H, W]      feature maps   [N, H, W, C]       with channels_last (4-D only)

and the names differ where the modules are named differently (``mapping``) or where
``nn.Sequential``'s children (``stack.0``) sit in ``nnx.Sequential.layers`` (``stack.layers.0``).
One trap has no name: a ``Linear`` after a flatten reads ``C*H*W`` features in torch's order
and ``H*W*C`` in a channels-last port, so its weight's columns are permuted, not just
transposed (``flatten``).

Example:
    >>> layout = Layout(mapping={"classifier": "head"}, flatten={"fc1": (64, 12, 12)})
    >>> layout.torch_name(("head", "kernel"))
    'classifier.weight'
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from jaxnet.errors import JaxnetError

RENAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}  # Flax leaf -> torch
_TO_TORCH = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1)}  # kernel ndim -> axes giving torch's layout


def _axes(array: np.ndarray) -> tuple[int, ...]:
    weight_shape(array.shape)  # a rule for its rank, or the error
    return _TO_TORCH[array.ndim]


def weight_shape(kernel_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch weight shape of a Flax kernel of ``kernel_shape``."""
    if len(kernel_shape) not in _TO_TORCH:
        raise JaxnetError(
            f"no layout rule for a {len(kernel_shape)}-D kernel (Linear, Conv1d and Conv2d have one)"
        )
    return tuple(kernel_shape[i] for i in _TO_TORCH[len(kernel_shape)])


def _array(value):
    """``value`` as an array: a numpy or JAX array as it is, anything else through numpy (a
    torch tensor too: its ``transpose`` is another function)."""
    jax = sys.modules.get("jax")  # never imported here: a JAX array exists only where JAX is
    if isinstance(value, np.ndarray) or (jax is not None and isinstance(value, jax.Array)):
        return value
    return np.asarray(value)


def _contiguous(array):
    """numpy's transposes are strided views: a contiguous copy (a JAX array's already is one)."""
    return np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array


def kernel_to_torch(kernel):
    """A Flax ``Linear``/``Conv`` kernel in torch's weight layout (numpy's or JAX's array)."""
    return _contiguous(kernel.transpose(_axes(kernel)))


def kernel_from_torch(weight):
    """A torch ``Linear``/``Conv`` weight in Flax's kernel layout (numpy's or JAX's array)."""
    return _contiguous(weight.transpose(tuple(int(i) for i in np.argsort(_axes(weight)))))


def keys(path: Iterable) -> list[str]:
    """A pytree path's keys as strings, without NNX's ``value`` level."""
    out = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return out[:-1] if out and out[-1] == "value" else out  # a module may be named "value" (attention)


def leaf_name(path: Iterable) -> str:
    """The parameter's own name at the end of a path: ``kernel``, ``bias``, ``scale``..."""
    return keys(path)[-1]


@dataclass(frozen=True)
class Layout:
    """The rules that carry a torch state dict onto an NNX port's parameters and back.

    Attributes:
        mapping: torch module path -> NNX module path, for modules named differently (a prefix
            maps everything below it: ``{"features": "body"}`` takes ``features.0.weight`` to
            ``body.0.kernel``).
        flatten: torch ``Linear`` path -> ``(C, H, W)`` of the map a channels-last port
            flattens before it (its columns are permuted as well as transposed).
        channels_last: the port's 4-D inputs and activations are NHWC (Flax's convention).
        sequential: NNX paths of ``nnx.Sequential`` modules, whose ``layers`` level torch
            lacks (``None``: every ``layers`` level, the built-in models' rule).
    """

    mapping: dict[str, str] = field(default_factory=dict)
    flatten: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    channels_last: bool = False
    sequential: frozenset[str] | None = None

    def torch_name(self, path: Iterable) -> str:
        """An NNX parameter path (``("head", "kernel")``) as torch's state-dict key."""
        parts = keys(path)
        module, leaf = self.torch_module(parts[:-1]), RENAMES.get(parts[-1], parts[-1])
        return f"{module}.{leaf}" if module else leaf

    def torch_module(self, parts: list[str]) -> str:
        """An NNX module path (its keys) as torch's module path."""
        kept = [
            k
            for i, k in enumerate(parts)
            if not (k == "layers" and (self.sequential is None or ".".join(parts[:i]) in self.sequential))
        ]
        path = ".".join(kept)
        for theirs, ours in sorted(self.mapping.items(), key=lambda kv: -len(kv[1])):
            if path == ours or path.startswith(ours + "."):
                return theirs + path[len(ours) :]
        return path

    def to_torch(self, path: Iterable, value: np.ndarray) -> tuple[str, np.ndarray]:
        """``(torch key, array in torch's layout)`` for one NNX parameter (or gradient); a JAX
        array's stays a JAX array."""
        path = list(path)
        name, array = self.torch_name(path), _array(value)
        if leaf_name(path) != "kernel":
            return name, array
        module = name.rsplit(".", 1)[0]
        if module in self.flatten:  # [H*W*C, out] -> [C*H*W, out] in torch's feature order
            c, h, w = self.flatten[module]
            array = array.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
        return name, kernel_to_torch(array)

    def from_torch(self, name: str, weight: np.ndarray, kernel: bool) -> np.ndarray:
        """Inverse of :meth:`to_torch` for the parameter ``name`` (``kernel``: a Flax kernel); a
        JAX array's stays a JAX array."""
        array = _array(weight)
        if not kernel:
            return array
        array = kernel_from_torch(array)
        module = name.rsplit(".", 1)[0]
        if module in self.flatten:  # [C*H*W, out] -> [H*W*C, out]
            c, h, w = self.flatten[module]
            array = _contiguous(array.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1))
        return array

    def activation_to_torch(self, value: np.ndarray) -> np.ndarray:
        """A port's activation (or input) in torch's layout: NHWC -> NCHW where channels-last."""
        return self._feature_map(value, (0, 3, 1, 2))

    def activation_from_torch(self, value: np.ndarray) -> np.ndarray:
        """A torch-layout input (or dropout mask) for the port: NCHW -> NHWC where channels-last."""
        return self._feature_map(value, (0, 2, 3, 1))

    def _feature_map(self, value: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(value)
        return (
            np.ascontiguousarray(value.transpose(axes)) if self.channels_last and value.ndim == 4 else value
        )


BUILT_IN = Layout()  # the tutorial MLP and the CNN: torch's names, NCHW at the interface
