"""Every submodule's output of a Flax NNX model, by ``nnx.capture`` (torch's forward hooks).

``nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)`` sows each module's
``__call__`` output under the module's path. ``nnx.Dropout`` modules can be handed their
masks (``{module path: 0/1 array}``): they then keep what the mask keeps, scaled as their own
draw is (``inputs / keep_prob``), so two frameworks can be compared in train mode on the
same masks. The masks reach the instances through a context variable read by
:class:`SharedMaskDropout`, which the instances (not the ``nnx.Dropout`` class) become.

Example:
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    >>> out, acts = activations(model, jnp.ones((1, 3)))
    >>> sorted(acts)
    ['layers.0', 'layers.1']
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.layout import keys


def module_paths(model: nnx.Module) -> dict[int, str]:
    """``{id(submodule): dotted path}``; the model itself is ``""``."""
    return {id(m): ".".join(map(str, p)) for p, m in nnx.iter_modules(model)}


_MASKS: contextvars.ContextVar[dict[str, jax.Array] | None] = contextvars.ContextVar(
    "jaxnet_dropout_masks", default=None
)


# (key, {module path: its place}) while :func:`drawn_dropout` is in force
_KEY: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("jaxnet_dropout_key", default=None)


class SharedMaskDropout(nnx.Dropout):
    """An ``nnx.Dropout`` that, while :func:`shared_dropout` hands a mask to its path
    (``mask_path``), keeps what the mask keeps, scaled as its own draw is
    (``inputs / keep_prob``); while :func:`drawn_dropout` hands a key, draws its mask from it;
    otherwise exactly ``nnx.Dropout``. Instances become one by
    :func:`share_masks`; the class ``nnx.Dropout`` itself is never changed."""

    mask_path: str = ""

    def __call__(self, inputs, *, deterministic=None, rngs=None):
        mask = (_MASKS.get() or {}).get(self.mask_path)
        drawn = _KEY.get()
        if mask is None and drawn is None:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        keep = 1.0 - self.rate
        if mask is None:  # drawn from the key of :func:`drawn_dropout`
            if self.rate == 0:
                return inputs
            key, index = drawn
            mask = jax.random.bernoulli(jax.random.fold_in(key, index[self.mask_path]), keep, inputs.shape)
        return jax.lax.select(mask.astype(bool), inputs / keep, jnp.zeros_like(inputs))


def share_masks(model: nnx.Module) -> list[tuple[nnx.Dropout, type]]:
    """Make each ``nnx.Dropout`` instance of ``model`` a :class:`SharedMaskDropout` that knows
    its path; returns ``(instance, its class before)`` to undo it with :func:`unshare_masks`."""
    changed = []
    for path, sub in nnx.iter_modules(model):
        if isinstance(sub, nnx.Dropout):
            changed.append((sub, type(sub)))
            if not isinstance(sub, SharedMaskDropout):
                object.__setattr__(sub, "__class__", SharedMaskDropout)  # this instance only
            object.__setattr__(sub, "mask_path", ".".join(map(str, path)))
    return changed


def _prepared(model: nnx.Module) -> bool:
    return all(
        isinstance(s, SharedMaskDropout) for _, s in nnx.iter_modules(model) if isinstance(s, nnx.Dropout)
    )


def unshare_masks(changed: list[tuple[nnx.Dropout, type]]) -> None:
    for sub, cls in changed:
        object.__setattr__(sub, "__class__", cls)
        if cls is not SharedMaskDropout:
            object.__delattr__(sub, "mask_path")


@contextlib.contextmanager
def shared_dropout(model: nnx.Module, masks: dict[str, jax.Array] | None) -> Iterator[None]:
    """While the block runs, each ``nnx.Dropout`` of ``model`` with a mask in ``masks`` (by
    path) applies it. A model prepared once by :func:`share_masks` (a backend's own copy) is
    left as it is; any other has its dropout instances made shared for the block only."""
    if not masks:
        yield
        return
    changed = [] if _prepared(model) else share_masks(model)
    token = _MASKS.set(dict(masks))
    try:
        yield
    finally:
        _MASKS.reset(token)
        unshare_masks(changed)


@contextlib.contextmanager
def drawn_dropout(model: nnx.Module, key: jax.Array | None) -> Iterator[None]:
    """While the block runs, each ``nnx.Dropout`` draws its keep-mask from ``key`` folded with
    the module's place among the model's modules (train mode with JAX's own RNG, where the
    port's dropouts hold no stream of their own); ``None``: as they are (eval: off). The key
    reaches the instances as the masks do (:class:`SharedMaskDropout`), never by the class."""
    if key is None:
        yield
        return
    index = {p: i for i, p in enumerate(sorted(set(module_paths(model).values())))}
    changed = [] if _prepared(model) else share_masks(model)
    token = _KEY.set((key, index))
    try:
        yield
    finally:
        _KEY.reset(token)
        unshare_masks(changed)


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
