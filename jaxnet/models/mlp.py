"""The tutorial's ``NeuralNetwork`` in Flax NNX (``torchref/models/mlp.py`` is the reference).

The module mirrors the torch one attribute for attribute (``flatten``,
``linear_relu_stack``), so parameter paths map one to one onto torch's keys::

    jaxnet params path                         torch state-dict key
    linear_relu_stack.layers.0.kernel [in,out] linear_relu_stack.0.weight [out,in]  (K = W.T)
    linear_relu_stack.layers.0.bias            linear_relu_stack.0.bias

``nnx.split(model, nnx.Param)`` gives ``(graphdef, params)``; everything hot is a pure
function of ``params`` (see ``jaxnet.train``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def torch_linear_init(fan_in: int) -> nnx.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch ``nn.Linear``'s default for weight and bias.

    Flax's own default (lecun_normal kernel, zero bias) trains differently from the tutorial,
    and a bias initializer is not told ``fan_in``, hence this closure.
    """
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


relu = jax.nn.relu  # derivative 0 at 0, like torch (``jnp.maximum(x, 0)`` would give 0.5)


def flatten(x: jax.Array) -> jax.Array:
    """``nn.Flatten()``: ``[batch, *dims] -> [batch, prod(dims)]`` (``start_dim=1``)."""
    return x.reshape(x.shape[0], -1)


class NeuralNetwork(nnx.Module):
    """``Flatten -> Linear -> ReLU -> Linear -> ReLU -> Linear`` (784, 512, 512, 10 by default).

    Example:
        >>> model = NeuralNetwork(rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 1, 28, 28))).shape
        (2, 10)
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (512, 512),
        num_classes: int = 10,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        sizes = (in_features, *hidden, num_classes)
        layers: list = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            init = torch_linear_init(fan_in)
            linear = nnx.Linear(
                fan_in, fan_out, kernel_init=init, bias_init=init, param_dtype=dtype, rngs=rngs
            )
            layers += [linear, relu]
        self.flatten = flatten
        self.linear_relu_stack = nnx.Sequential(*layers[:-1])

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[batch, 1, 28, 28] -> [batch, num_classes]`` logits."""
        x = self.flatten(x)
        logits = self.linear_relu_stack(x)
        return logits


def _mlp_activations(model: NeuralNetwork, x: jax.Array) -> dict[str, jax.Array]:
    """Every intermediate output keyed like ``torchref.activations``, then the softmax."""
    out = {"flatten": model.flatten(x)}
    h = out["flatten"]
    for i, layer in enumerate(model.linear_relu_stack.layers):
        h = layer(h)
        out[f"linear_relu_stack.{i}"] = h
    out["softmax"] = jax.nn.softmax(h, axis=1)
    return out


def from_config(fields: dict, *, seed: int = 0, dtype: str = "float32") -> NeuralNetwork:
    """The registry's builder: a fresh model of ``ModelConfig`` fields (torch's init
    distribution; JAX's RNG stream)."""
    return NeuralNetwork(
        fields["in_features"],
        fields["hidden"],
        fields["num_classes"],
        dtype=jnp.dtype(dtype),
        rngs=nnx.Rngs(seed),
    )


def named_activations(model: NeuralNetwork, x: jax.Array, masks=None) -> dict[str, jax.Array]:
    """Every intermediate output keyed like ``torchref.activations``, then the softmax (no dropout)."""
    return _mlp_activations(model, x)


def apply(model: NeuralNetwork, x: jax.Array, masks=None) -> jax.Array:
    """``model(x)``: the MLP has no dropout to give masks to."""
    return model(x)
