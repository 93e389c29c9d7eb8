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

from jaxnet.config import AnyModel
from jaxnet.errors import CheckpointError
from jaxnet.layout import BUILT_IN, Layout, kernel_to_torch, keys, leaf_name
from jaxnet.rules import PortLayout


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


def build(config: AnyModel, *, seed: int = 0, dtype: str = "float32") -> nnx.Module:
    """A freshly initialised model of ``config``'s kind (torch's init distribution; JAX's RNG
    stream): the tutorial MLP, or the CNN of ``jaxnet.cnn``."""
    if config.kind == "cnn":
        from jaxnet import cnn

        return cnn.build(config, seed=seed, dtype=dtype)
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


Masks = dict[str, jax.Array]  # a dropout's 0/1 keep-mask, by the dropout's name


def apply(model: nnx.Module, x: jax.Array, masks: Masks | None = None) -> jax.Array:
    """``model(x)``, its dropouts given ``masks`` (the CNN's by name; a port's ``nnx.Dropout``
    modules by path), or off."""
    from jaxnet import capture, cnn

    if not masks or isinstance(model, NeuralNetwork):
        return model(x)
    if isinstance(model, cnn.Net):
        return model(x, masks=(masks["dropout1"], masks["dropout2"]))
    return capture.forward(model, x, masks)


def activations(model: nnx.Module, x: jax.Array, masks: Masks | None = None) -> dict[str, jax.Array]:
    """Every intermediate output: the built-in models' keyed like torch's module paths (and
    their functional steps: ReLUs, pool, softmax); any other module's by ``nnx.capture``,
    keyed by its own paths, with its output as ``output``."""
    from jaxnet import capture, cnn

    if isinstance(model, NeuralNetwork):
        return _mlp_activations(model, x)
    if isinstance(model, cnn.Net):
        return cnn.activations(model, x, None if not masks else (masks["dropout1"], masks["dropout2"]))
    out, found = capture.activations(model, x, masks)
    return found | {"output": out}


def module_paths(model: nnx.Module) -> list[str]:
    """Dotted paths of the model's submodules (``""``: the model)."""
    return [".".join(map(str, p)) for p, _ in nnx.iter_modules(model)]


def _mlp_activations(model: NeuralNetwork, x: jax.Array) -> dict[str, jax.Array]:
    """Every intermediate output keyed like ``torchref.activations``, then the softmax."""
    out = {"flatten": model.flatten(x)}
    h = out["flatten"]
    for i, layer in enumerate(model.linear_relu_stack.layers):
        h = layer(h)
        out[f"linear_relu_stack.{i}"] = h
    out["softmax"] = jax.nn.softmax(h, axis=1)
    return out


# ---------------------------------------------------------------------------- torch names


def to_torch_layout(tree, layout: Layout = BUILT_IN) -> dict[str, np.ndarray]:
    """Any params-shaped tree (params, grads, momentum) -> ``{torch key: array in torch layout}``
    (the rules: :mod:`jaxnet.layout`, or a port's :class:`jaxnet.rules.PortLayout`)."""
    if isinstance(layout, PortLayout):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return layout.leaves_to_torch({".".join(keys(p)): np.asarray(v) for p, v in flat})
    return dict(layout.to_torch(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])


def from_torch_layout(template, state: dict[str, np.ndarray], layout: Layout = BUILT_IN):
    """Inverse of :func:`to_torch_layout`: fill ``template``'s structure from torch-layout arrays.

    Raises:
        CheckpointError: a key is missing or a shape or dtype differs from the template's.
    """
    if isinstance(layout, PortLayout):
        return _from_port_layout(template, state, layout)

    def take(path, leaf):
        name = layout.torch_name(path)
        if name not in state:
            raise CheckpointError(f"missing key {name!r}")
        value = np.asarray(state[name])
        is_kernel = leaf_name(path) == "kernel"
        expected = tuple(leaf.shape)
        if is_kernel:  # torch's weight shape for this kernel
            expected = kernel_to_torch(np.empty(leaf.shape, np.int8)).shape
        if value.shape != expected or value.dtype != leaf.dtype:
            raise CheckpointError(
                f"key {name!r}: expected {leaf.dtype}{list(expected)}, found {value.dtype}{list(value.shape)}"
            )
        return jnp.asarray(layout.from_torch(name, value, is_kernel))

    return jax.tree_util.tree_map_with_path(take, template)


def _from_port_layout(template, state: dict[str, np.ndarray], layout: PortLayout):
    """:func:`from_torch_layout` by the rules of a port's torch modules."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [".".join(keys(p)) for p, _ in flat]
    placed = layout.leaves_from_torch(
        state, {n: tuple(leaf.shape) for n, (_, leaf) in zip(names, flat, strict=True)}
    )
    out = []
    for name, (_, leaf) in zip(names, flat, strict=True):
        value = np.asarray(placed[name])
        if value.shape != tuple(leaf.shape) or value.dtype != leaf.dtype:
            raise CheckpointError(
                f"nnx {name!r}: expected {leaf.dtype}{list(leaf.shape)}, the torch weights give {value.dtype}{list(value.shape)}"
            )
        out.append(jnp.asarray(value))
    return jax.tree_util.tree_unflatten(treedef, out)
