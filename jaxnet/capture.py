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


def forward(model: nnx.Module, x: jax.Array, masks: dict[str, jax.Array] | None = None) -> jax.Array:
    """``model(x)``, with ``masks`` given to its dropouts."""
    with shared_dropout(model, masks):
        return model(x)


def activations(
    model: nnx.Module, x: jax.Array, masks: dict[str, jax.Array] | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(model(x), {submodule path: its output})``; a module called twice gives ``name``
    and ``name#2``; outputs that are not one array are left out."""
    with shared_dropout(model, masks):
        out, sown = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    found: dict[str, jax.Array] = {}
    for path, value in jax.tree_util.tree_flatten_with_path(sown, is_leaf=lambda v: isinstance(v, tuple))[0]:
        parts = keys(path)
        if parts[-1] != "__call__" or len(parts) < 2 or not isinstance(value, tuple):
            continue  # the model's own output is ``out``; other methods are not submodule outputs
        name = ".".join(parts[:-1])
        for n, item in enumerate(value, start=1):
            if isinstance(item, jax.Array):
                found[name if n == 1 else f"{name}#{n}"] = item
    return out, found
