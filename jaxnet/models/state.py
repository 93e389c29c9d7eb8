"""Putting a mapped state (a nested dict of numpy arrays, NNX's paths) into an NNX model.

Shared by the families' ``load_torch_state``: the keys and shapes are checked against the
model's own parameters and statistics (``nnx.Param``, ``nnx.BatchStat``; RNG streams are not
part of a state dict), then ``nnx.update`` replaces them. The model may be abstract
(``nnx.eval_shape``: nothing initialised or compiled), as long as the state covers it all.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxnet.errors import CheckpointError


def upload(value: np.ndarray) -> jax.Array:
    """A copy of ``value`` as a JAX array, without the per-shape compiled program that
    ``jnp.asarray`` of a numpy array runs (``lax.stage``: one compile per new shape and dtype).
    A copy: ``device_put`` alone aliases numpy's memory on a CPU."""
    return jax.device_put(value, may_alias=False)


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"a": {0: {"kernel": x}}}`` -> ``{"a.0.kernel": x}``."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_nested(model: nnx.Module, tree: dict, family: str) -> nnx.Module:
    """``nnx.update(model, tree)`` after checking that ``tree`` covers exactly the model's
    ``nnx.Param`` and ``nnx.BatchStat`` leaves with their shapes; returns ``model``.

    Raises:
        CheckpointError: a leaf missing or left over, or a shape that differs (naming it).
    """
    current = flat(nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    new = flat(tree)
    if new.keys() != current.keys():
        missing, extra = sorted(current.keys() - new.keys()), sorted(new.keys() - current.keys())
        raise CheckpointError(
            f"{family} state does not fit the model: missing {missing[:3]}, extra {extra[:3]}"
        )
    for key, value in new.items():
        if np.shape(value) != tuple(current[key].shape):
            raise CheckpointError(
                f"{family} state: {key} has shape {np.shape(value)}, the model {current[key].shape}"
            )
    nnx.update(model, jax.tree.map(upload, tree))
    return model
