"""Inputs and targets as pytrees of numpy arrays (numpy only).

A model's inputs are one array, a tuple of arrays (positional arguments) or a dict of arrays
(keyword arguments); targets likewise. Every leaf has the examples along its first axis. The
parity engine takes, casts and counts them through these functions, so it handles token ids
with a padding mask exactly as it handles one batch of images:

- floating leaves follow the row's dtype (float32, float64);
- integer and bool leaves keep theirs (token ids stay int64, a mask stays bool).

Example:
    >>> ids, mask = np.zeros((4, 8), np.int64), np.ones((4, 8), bool)
    >>> size((ids, mask)), take((ids, mask), np.array([0, 2]))[0].shape
    (4, (2, 8))
    >>> cast({"x": np.ones((2, 3), np.float32), "ids": ids[:2]}, "float64")["ids"].dtype
    dtype('int64')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jaxnet.errors import JaxnetError

Tree = Any  # an array, a tuple/list of trees, or a dict of trees


def leaves(tree: Tree, prefix: str = "") -> dict[str, np.ndarray]:
    """``{path: leaf}``: ``""`` for a bare array, ``"0"``, ``"1"`` in a tuple, keys in a dict."""
    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in tree.items():
            out |= leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(tree, tuple | list):
        out = {}
        for i, v in enumerate(tree):
            out |= leaves(v, f"{prefix}.{i}" if prefix else str(i))
        return out
    return {prefix: tree}


def tree_map(fn: Callable[[np.ndarray], Any], tree: Tree) -> Tree:
    """``fn`` on every leaf, the structure kept (tuples stay tuples, dicts stay dicts)."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple | list):
        return type(tree)(tree_map(fn, v) for v in tree)
    return fn(tree)


def is_float(a) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def cast(tree: Tree, dtype: str) -> Tree:
    """Floating leaves in ``dtype`` (contiguous); integer and bool leaves as they are."""
    return tree_map(lambda a: np.asarray(a, dtype, order="C") if is_float(a) else np.asarray(a), tree)


def take(tree: Tree, idx: np.ndarray | slice) -> Tree:
    """The examples ``idx`` (first axis) of every leaf."""
    return tree_map(lambda a: np.asarray(a)[idx], tree)


def size(tree: Tree) -> int:
    """The number of examples: every leaf's first axis, which must agree.

    Raises:
        JaxnetError: a scalar leaf, or leaves with different numbers of examples.
    """
    found = {k: np.shape(v) for k, v in leaves(tree).items()}
    if not found or any(len(s) == 0 for s in found.values()):
        raise JaxnetError(f"every input needs a leading batch axis, got shapes {found}")
    counts = {s[0] for s in found.values()}
    if len(counts) != 1:
        raise JaxnetError(f"inputs disagree on the number of examples: {found}")
    return counts.pop()


def prepare(tree: Tree, what: str = "inputs") -> Tree:
    """numpy arrays for every leaf, checked: a one-line error for anything else.

    Raises:
        JaxnetError: a leaf that is not numeric (a string, None, an object array).
    """

    def check(a):
        arr = np.asarray(a)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise JaxnetError(
                f"{what}: every leaf must be a numeric array, found {arr.dtype} ({type(a).__name__})"
            )
        return arr

    return tree_map(check, tree)


def args_kwargs(tree: Tree) -> tuple[tuple, dict]:
    """How a model is called with ``tree``: one array or a tuple positionally, a dict as keywords."""
    if isinstance(tree, dict):
        return (), dict(tree)
    if isinstance(tree, tuple | list):
        return tuple(tree), {}
    return (tree,), {}
