"""How the torch module and its NNX port line up: the layout rule of every torch module, and
the check that every parameter on one side has its counterpart on the other.

Rules are chosen by the torch module's type (:func:`torchref.capture.module_kinds`), never by
an array's rank: the user's :class:`~jaxnet.rules.Rule` where given, else the built-in rule of
the kind; a module with state and neither is a one-line error naming the rule it needs.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from jaxnet.config import PortConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity.arguments import Arguments, TorchSide
from jaxnet.rules import NEEDS, RULES, PortLayout, Rule, conv_transpose
from jaxnet.rules import linear as rules_linear


def port_config(side: TorchSide, args: Arguments, nnx_module, rules: dict | None) -> PortConfig:
    """The pair as the engine sees it: names, shapes, layout rules (the torch module's kinds,
    the port's ConvTranspose flags, the user's rules), loss and mode."""
    layout = PortLayout(
        dict(args.mapping),
        {k: tuple(v) for k, v in args.flatten.items()},
        args.channels_last,
        kinds=dict(side.kinds),
        rules=_rules(
            side.kinds, side.state, nnx_module, dict(rules or {}), dict(args.flatten), dict(args.mapping)
        ),
    )
    trains = any(k == "batchnorm" for k in side.kinds.values()) if args.train is None else args.train
    return PortConfig(
        shapes={k: tuple(v.shape) for k, v in side.state.items()},
        loss=args.loss,
        relu_inputs=tuple(args.relu_inputs),
        pool_inputs=tuple(args.pool_inputs),
        dropouts=dict(side.dropouts),
        layout=layout,
        buffers=tuple(side.buffers),
        integer_keys=tuple(side.integers),
        trains=trains,
        ignore_index=args.ignore_index,
    )


def _rules(kinds, state, nnx_module, given, flatten, mapping) -> dict[str, Rule]:
    """The rule of each torch module that holds state: the user's, else the built-in one of
    its kind; a module with neither is a one-line error naming what it needs."""
    out: dict[str, Rule] = {}
    transposed = _transpose_kernels(nnx_module, mapping)
    for path, kind in kinds.items():
        if path in given:
            out[path] = given[path]
        elif kind == "linear":
            out[path] = rules_linear(flatten.get(path))
        elif kind == "conv_transpose":
            out[path] = conv_transpose(transposed.get(path, False))
        elif kind in RULES:
            out[path] = RULES[kind]
        else:
            owned = [k for k in state if k.rsplit(".", 1)[0] == path or (path == "" and "." not in k)]
            if owned:
                raise JaxnetError(
                    f"torch module {path!r} ({kind.removeprefix('other:')}) holds {', '.join(owned)}: {NEEDS}"
                )
    return out


def _transpose_kernels(nnx_module, mapping) -> dict[str, bool]:
    """torch path -> ``transpose_kernel`` of each ``nnx.ConvTranspose`` in the port."""
    if nnx_module is None:  # recording: the port is not there yet
        return {}
    from flax import nnx

    from jaxnet.layout import Layout

    names = Layout(mapping)
    return {
        names.torch_module([str(p) for p in path]): bool(sub.transpose_kernel)
        for path, sub in nnx.iter_modules(nnx_module)
        if isinstance(sub, nnx.ConvTranspose)
    }


def check_names(state: dict[str, np.ndarray], nnx_module, port: PortConfig) -> None:
    """Every torch parameter has one NNX parameter of the same shape (after layout), and back."""
    from jaxnet.backends import get_backend

    _check_owners(state, nnx_module, port)
    theirs = get_backend("jax", port, module=nnx_module).state_dict()
    only_torch = sorted(state.keys() - theirs.keys())
    only_jax = sorted(theirs.keys() - state.keys())
    if only_torch or only_jax:
        raise JaxnetError(
            "parameters do not line up (add a mapping, torch path -> nnx path): "
            f"torch only: {', '.join(only_torch) or '-'}; nnx only (as torch would name them): {', '.join(only_jax) or '-'}"
        )
    shapes = [
        f"{k}: torch {list(state[k].shape)}, nnx {list(theirs[k].shape)} (in torch's layout)"
        for k in state
        if state[k].shape != theirs[k].shape
    ]
    if shapes:
        raise JaxnetError("parameter shapes differ: " + "; ".join(shapes))


def _check_owners(state: dict[str, np.ndarray], nnx_module, port: PortConfig) -> None:
    """Every NNX parameter sits in a module torch has, and every torch module with state has an
    NNX counterpart: else a one-line error listing both sides (in torch's names)."""
    import jax
    from flax import nnx

    from jaxnet.layout import RENAMES, keys

    layout = port.layout
    sequential = frozenset(
        ".".join(map(str, p)) for p, m in nnx.iter_modules(nnx_module) if isinstance(m, nnx.Sequential)
    )
    layout = replace(layout, sequential=sequential)
    reached, only_jax = set(), []
    flat = [
        p
        for f in (nnx.Param, nnx.BatchStat)
        for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(nnx_module, f))[0]
    ]
    for path in flat:
        parts = keys(path)
        module = layout.torch_module(parts[:-1])
        owner = layout.owner(module)
        if owner is None or (owner == "" and module):
            leaf = RENAMES.get(parts[-1], parts[-1])
            only_jax.append(f"{module}.{leaf}" if module else leaf)
        else:
            reached.add(owner)
    only_torch = [
        k for k in state if (layout.owner(k.rsplit(".", 1)[0] if "." in k else "") or "") not in reached
    ]
    if only_torch or only_jax:
        raise JaxnetError(
            "parameters do not line up (add a mapping, torch path -> nnx path): "
            f"torch only: {', '.join(sorted(only_torch)) or '-'}; nnx only (as torch would name them): {', '.join(sorted(only_jax)) or '-'}"
        )
