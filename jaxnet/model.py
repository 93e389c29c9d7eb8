"""The tutorial's ``NeuralNetwork`` in Flax NNX, and its bridge to torch's state dict.

The module mirrors ``torchref/model.py`` attribute for attribute (``flatten``,
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

from jaxnet.config import ModelConfig
from jaxnet.errors import CheckpointError


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


def build(config: ModelConfig, *, seed: int = 0, dtype: str = "float32") -> NeuralNetwork:
    """A freshly initialised model (torch's init distribution; JAX's RNG stream)."""
    return NeuralNetwork(
        config.in_features,
        config.hidden,
        config.num_classes,
        dtype=jnp.dtype(dtype),
        rngs=nnx.Rngs(seed),
    )


def load_model(path) -> NeuralNetwork:
    """The Flax model of a checkpoint, with its weights, in one call.

    Reads what ``jaxnet.checkpoint.load`` reads (a checkpoint directory, a safetensors state
    dict, a tutorial ``.pth``); the model is built abstractly and filled, nothing computed.
    A float64 checkpoint needs ``jax.enable_x64(True)`` around the call and its use.

    Example:
        >>> model = load_model("runs/checkpoint")          # doctest: +SKIP
        >>> model(images).argmax(axis=1)                    # doctest: +SKIP
    """
    from jaxnet import checkpoint

    ckpt = checkpoint.load(path)
    if ckpt.dtype == np.float64 and not jax.config.jax_enable_x64:
        raise CheckpointError(f"{path}: holds float64 weights; load it inside jax.enable_x64(True)")
    abstract = nnx.eval_shape(lambda: build(ckpt.config, dtype=str(ckpt.dtype)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    return nnx.merge(graphdef, from_torch_layout(params, ckpt.model), rest)


def activations(model: NeuralNetwork, x: jax.Array) -> dict[str, jax.Array]:
    """Every intermediate output keyed like ``torchref.activations``, then the softmax."""
    out = {"flatten": model.flatten(x)}
    h = out["flatten"]
    for i, layer in enumerate(model.linear_relu_stack.layers):
        h = layer(h)
        out[f"linear_relu_stack.{i}"] = h
    out["softmax"] = jax.nn.softmax(h, axis=1)
    return out


# ---------------------------------------------------------------------------- torch names


def _torch_name(path: tuple) -> tuple[str, bool]:
    """``(linear_relu_stack, layers, 0, kernel[, value])`` -> (``linear_relu_stack.0.weight``, True)."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    keys = [k for k in keys if k not in ("layers", "value")]
    is_kernel = keys[-1] == "kernel"
    keys[-1] = "weight" if is_kernel else keys[-1]
    return ".".join(keys), is_kernel


def to_torch_layout(tree) -> dict[str, np.ndarray]:
    """Any params-shaped tree (params, grads, momentum) -> ``{torch key: [out, in] array}``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name, is_kernel = _torch_name(path)
        array = np.asarray(leaf)
        out[name] = np.ascontiguousarray(array.T) if is_kernel else array
    return out


def from_torch_layout(template, state: dict[str, np.ndarray]):
    """Inverse of :func:`to_torch_layout`: fill ``template``'s structure from torch-layout arrays.

    Raises:
        CheckpointError: a key is missing or a shape or dtype differs from the template's.
    """

    def take(path, leaf):
        name, is_kernel = _torch_name(path)
        if name not in state:
            raise CheckpointError(f"missing key {name!r}")
        value = np.asarray(state[name])
        expected = leaf.shape[::-1] if is_kernel else leaf.shape
        if value.shape != expected or value.dtype != leaf.dtype:
            raise CheckpointError(
                f"key {name!r}: expected {leaf.dtype}{list(expected)}, found {value.dtype}{list(value.shape)}"
            )
        return jnp.asarray(value.T if is_kernel else value)

    return jax.tree_util.tree_map_with_path(take, template)
