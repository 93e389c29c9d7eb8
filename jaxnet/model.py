"""The JAX side's model entry points and its bridge to torch's state dict.

The models themselves live in :mod:`jaxnet.models` (one file per family; the tutorial's
``NeuralNetwork`` in :mod:`jaxnet.models.mlp`, re-exported here): :func:`build` makes the
model of any registered config (:mod:`jaxnet.registry`), :func:`load_model` the model of a
checkpoint, and :func:`to_torch_layout` / :func:`from_torch_layout` carry any params-shaped
tree to and from torch's names and layouts.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
from flax import nnx

from jaxnet import registry
from jaxnet.config import AnyModel
from jaxnet.errors import CheckpointError
from jaxnet.layout import BUILT_IN, Layout, keys, leaf_name, weight_shape
from jaxnet.models.mlp import NeuralNetwork, flatten, relu, torch_linear_init  # noqa: F401  (public names)
from jaxnet.models.state import upload
from jaxnet.rules import PortLayout


def build(config: AnyModel, *, seed: int = 0, dtype: str = "float32") -> nnx.Module:
    """A freshly initialised model of ``config``'s family (its own initialisation, JAX's RNG
    stream), by the family's ``from_config`` (:mod:`jaxnet.registry`)."""
    return registry.build("jax", config, seed=seed, dtype=dtype)


def load_model(path) -> nnx.Module:
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
    graphdef, params, stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    layout = ckpt.config.layout
    params = from_torch_layout(params, ckpt.model, layout)
    if jax.tree.leaves(stats):  # BatchNorm's running statistics
        stats = from_torch_layout(stats, ckpt.model, layout)
    return nnx.merge(graphdef, params, stats, rest)


Masks = dict[str, jax.Array]  # a dropout's 0/1 keep-mask, by the dropout's name


def _own(model: nnx.Module, name: str):
    """The function ``name`` of the family file that defines ``model``'s class, if it has one
    (the built-in families apply their masks by name and key their outputs like torch's)."""
    module = sys.modules.get(type(model).__module__)
    if module is None or not module.__name__.startswith("jaxnet.models."):
        return None
    return getattr(module, name, None)


def apply(model: nnx.Module, x: jax.Array, masks: Masks | None = None) -> jax.Array:
    """``model(x)``, its dropouts given ``masks`` (the built-in families' by name; a port's
    ``nnx.Dropout`` modules by path), or off."""
    from jaxnet import capture

    own = _own(model, "apply")
    if own is not None:
        return own(model, x, masks)
    return model(x) if not masks else capture.forward(model, x, masks)


def activations(model: nnx.Module, x: jax.Array, masks: Masks | None = None) -> dict[str, jax.Array]:
    """Every intermediate output: a built-in family's keyed like torch's module paths (and
    their functional steps: ReLUs, pool, softmax); any other module's by ``nnx.capture``,
    keyed by its own paths, with its output as ``output``."""
    from jaxnet import capture

    own = _own(model, "named_activations")
    if own is not None:
        return own(model, x, masks)
    out, found = capture.activations(model, x, masks)
    return found | {"output": out}


def module_paths(model: nnx.Module) -> list[str]:
    """Dotted paths of the model's submodules (``""``: the model)."""
    return [".".join(map(str, p)) for p, _ in nnx.iter_modules(model)]


# ---------------------------------------------------------------------------- torch names


def _local(a):
    """A replicated JAX array as this process holds it (its own copy, where other processes
    hold some of the devices: nothing then runs across processes); anything else as it is."""
    return a.addressable_data(0) if isinstance(a, jax.Array) and not a.is_fully_addressable else a


def host(tree):
    """numpy arrays of a tree's arrays (replicated JAX ones also where other processes hold
    some of the devices). A JAX array on a CPU is read where it lies: a read-only view."""
    return jax.tree.map(lambda a: np.asarray(_local(a)), tree)


def to_torch_layout(tree, layout: Layout = BUILT_IN) -> dict[str, np.ndarray]:
    """Any params-shaped tree (params, grads, momentum) -> ``{torch key: numpy array in torch
    layout}`` (the rules: :mod:`jaxnet.layout`, or a port's :class:`jaxnet.rules.PortLayout`).

    By :mod:`jaxnet.layout`'s rules, the kernels of a tree of JAX arrays are turned on their
    device (XLA's transposes: numpy's took 4-8 times as long; the first read of each kernel
    shape in a process compiles its transpose), then read out: on a CPU, read-only views
    (copy one before writing into it)."""
    flat = [(p, _local(v)) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]]
    if isinstance(layout, PortLayout):
        return layout.leaves_to_torch(host({".".join(keys(p)): v for p, v in flat}))
    return host(dict(layout.to_torch(path, leaf) for path, leaf in flat))


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
            expected = weight_shape(tuple(leaf.shape))
        if value.shape != expected or value.dtype != leaf.dtype:
            raise CheckpointError(
                f"key {name!r}: expected {leaf.dtype}{list(expected)}, found {value.dtype}{list(value.shape)}"
            )
        # by numpy: a load's kernels are moved once (a command's start would pay a program per
        # kernel shape; to_torch_layout's reads, every step of a parity run, are XLA's)
        return upload(layout.from_torch(name, value, is_kernel))

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
        out.append(upload(value))
    return jax.tree_util.tree_unflatten(treedef, out)
