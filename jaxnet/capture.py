"""Every submodule's output of a Flax NNX model, by ``nnx.capture`` (torch's forward hooks).

``nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)`` sows each module's
``__call__`` output under the module's path. ``nnx.Dropout`` modules can be handed their
masks (``{module path: 0/1 array}``): they then keep what the mask keeps, scaled as their own
draw is (``inputs / keep_prob``), so two frameworks can be compared in train mode on the
same masks.

Example:
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    >>> out, acts = activations(model, jnp.ones((1, 3)))
    >>> sorted(acts)
    ['layers.0', 'layers.1']
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.layout import keys


def module_paths(model: nnx.Module) -> dict[int, str]:
    """``{id(submodule): dotted path}``; the model itself is ``""``."""
    return {id(m): ".".join(map(str, p)) for p, m in nnx.iter_modules(model)}


@contextlib.contextmanager
def shared_dropout(model: nnx.Module, masks: dict[str, jax.Array] | None) -> Iterator[None]:
    """While the block runs, each ``nnx.Dropout`` with a mask in ``masks`` applies it."""
    if not masks:
        yield
        return
    paths, original = module_paths(model), nnx.Dropout.__call__

    def call(self, inputs, *, deterministic=None, rngs=None):
        mask = masks.get(paths.get(id(self), ""))
        if mask is None:
            return original(self, inputs, deterministic=deterministic, rngs=rngs)
        keep = 1.0 - self.rate
        return jax.lax.select(mask.astype(bool), inputs / keep, jnp.zeros_like(inputs))

    nnx.Dropout.__call__ = call
    try:
        yield
    finally:
        nnx.Dropout.__call__ = original


@contextlib.contextmanager
def drawn_dropout(model: nnx.Module, key: jax.Array | None) -> Iterator[None]:
    """While the block runs, each ``nnx.Dropout`` draws its keep-mask from ``key`` folded with
    the module's place among the model's modules (train mode with JAX's own RNG, where the
    port's dropouts hold no stream of their own); ``None``: as they are (eval: off)."""
    if key is None:
        yield
        return
    paths, original = module_paths(model), nnx.Dropout.__call__
    index = {p: i for i, p in enumerate(sorted(set(paths.values())))}

    def call(self, inputs, *, deterministic=None, rngs=None):
        if self.rate == 0:
            return inputs
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(jax.random.fold_in(key, index[paths[id(self)]]), keep, inputs.shape)
        return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))

    nnx.Dropout.__call__ = call
    try:
        yield
    finally:
        nnx.Dropout.__call__ = original


def forward(
    model: nnx.Module,
    x,
    masks: dict[str, jax.Array] | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    key: jax.Array | None = None,
):
    """``model(x)`` (or ``model(*args, **kwargs)``), with ``masks`` given to its dropouts, or
    with masks drawn from ``key`` (:func:`drawn_dropout`)."""
    with shared_dropout(model, masks), drawn_dropout(model, key):
        return model(*(args or (x,)), **(kwargs or {}))


def activations(
    model: nnx.Module,
    x,
    masks: dict[str, jax.Array] | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
) -> tuple[object, dict[str, jax.Array]]:
    """``(model(x), {submodule path: its output})``; a module called twice gives ``name``
    and ``name#2``; pytree outputs are named leaf by leaf (:func:`named_leaves`)."""
    with shared_dropout(model, masks):
        call = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)
        out, sown = call(*(args or (x,)), **(kwargs or {}))
    found: dict[str, jax.Array] = {}
    is_call = lambda v: isinstance(v, tuple) and not hasattr(v, "_fields")  # noqa: E731
    for path, value in jax.tree_util.tree_flatten_with_path(sown, is_leaf=is_call)[0]:
        parts = keys(path)
        if len(parts) < 2 or parts[-1] != "__call__" or not isinstance(value, tuple):
            continue  # the model's own output is ``out``; other methods are not submodule outputs
        name = ".".join(parts[:-1])
        for n, item in enumerate(value, start=1):
            for leaf, array in named_leaves(name, item).items():
                found[leaf if n == 1 else f"{leaf}#{n}"] = array
    return out, found


def named_leaves(name: str, output) -> dict[str, jax.Array]:
    """An output as named arrays, as ``torchref.capture.named_leaves`` names torch's: an array
    is ``name``; a tuple's first element ``name``, the others ``name.1``...; a dict's (or a
    dataclass's) fields ``name.key``; ``None`` is left out."""
    if isinstance(output, jax.Array):
        return {name: output}
    if isinstance(output, tuple | list):
        out: dict[str, jax.Array] = {}
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
