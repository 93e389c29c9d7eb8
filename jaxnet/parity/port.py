"""``compare``: the parity engine on any PyTorch module and its Flax NNX port.

The same machinery as ``jaxnet parity`` (measured floors, teacher-forced steps, explained
free-running divergence), on the user's two modules: the torch module's weights are carried
onto the port by module path (:mod:`jaxnet.layout`), every named submodule's output is
captured on both sides (torch forward hooks, ``nnx.capture``) and compared, then the loss,
every gradient, and optimizer steps. A report says *where* they first differ and whether
that is rounding (within K times the measured floor) or not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jaxnet import batch
from jaxnet.config import PORT_LOSSES, OptimConfig, PortConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity.builtin import session
from jaxnet.parity.layers import DROPOUT_NOTE, captured_names, forward_and_gradient, probes, shared_masks
from jaxnet.parity.report import Report, Row
from jaxnet.parity.sections import steps_section
from jaxnet.rules import NEEDS, RULES, PortLayout, Rule, conv_transpose
from jaxnet.rules import linear as rules_linear


def compare(
    torch_module,
    nnx_module,
    inputs=None,
    targets=None,
    *,
    loss: object = "cross_entropy",
    optimizer: OptimConfig | None = None,
    steps: int = 10,
    batch_size: int | None = None,
    mapping: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, int, int]] | None = None,
    channels_last: bool = False,
    rules: dict[str, Rule] | None = None,
    relu_inputs: Sequence[str] = (),
    pool_inputs: Sequence[str] = (),
    ignore_index: int = -100,
    train: bool | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
    matmul_precision: str = "highest",
    seed: int = 0,
) -> Report:
    """Compare a torch module with its NNX port: forward, loss, gradients, running statistics,
    optimizer steps.

    The port gets the torch module's weights and buffers (its own initialisation is not used),
    in float32 and in float64. Rows (``report.rows``) are judged against floors measured in this
    run: torch's float32 result against its float64 result. ``report.environment`` names the
    first quantity that differs and what that suggests.

    Args:
        torch_module, nnx_module: the pair; copies are taken and cast. ``torch_module`` may be
            the path of a recorded reference (:func:`jaxnet.parity.record`): the same rows and
            verdicts, judged against the floors measured where it was recorded, without torch.
        inputs: real inputs in torch's layout: one array, a tuple of arrays (positional
            arguments) or a dict (keyword arguments); floating arrays follow the row's dtype,
            integer and bool ones (token ids, masks) keep theirs. Examples along axis 0.
        targets: what the loss compares the output with (class ids of any leading shape, or
            floats for ``mse``), or any pytree a user loss reads.
        loss: ``"cross_entropy"`` of logits ``[..., V]``, ``"nll"`` of log-probabilities, or
            ``"mse"``; or a pair ``(torch_loss(outputs, targets), jax_loss(outputs, targets))``.
        optimizer: the step rule compared over ``steps`` steps (default: SGD, lr 0.01);
            ``steps=0``: the forward and the gradients only.
        batch_size: examples per step, taken from ``inputs`` in order, cycling (default: all).
        mapping: torch module path -> NNX path, where they are named differently.
        flatten: torch ``Linear`` path -> ``(C, H, W)``, for a Linear after a channels-last flatten.
        channels_last: the port takes ``[N, *spatial, C]`` where torch takes ``[N, C, *spatial]``.
        rules: torch module path -> :class:`jaxnet.rules.Rule`, for modules without a built-in rule.
        relu_inputs, pool_inputs: outputs a ReLU or a 2x2 max-pool reads (torch names).
        ignore_index: targets that count in no loss (cross-entropy and NLL).
        train: compare steps in train mode (default: where the model has BatchNorm).

    Raises:
        JaxnetError: one line naming what does not line up (parameters, a module without a
            rule, shapes, inputs, outputs) and what would fix it.

    Example:
        >>> report = parity.compare(torch_net, nnx_net, (ids, mask), targets,   # doctest: +SKIP
        ...                         optimizer=OptimConfig(name="adamw", lr=1e-3), steps=5)
        >>> parity.print_table(report); report.passed
    """
    if isinstance(torch_module, str | Path):  # a recorded reference: no torch in this process
        from jaxnet.parity.recorded import compare_recorded

        return compare_recorded(torch_module, nnx_module, rules=rules, loss=loss, device=device)
    from jaxnet.backends import get_backend

    _check_loss(loss)
    inputs, targets = _checked_inputs(inputs, targets, steps, batch_size)
    torch_side = TorchSide.of(torch_module)
    args = Arguments(loss, optimizer or OptimConfig(name="sgd", lr=0.01), steps, batch_size, dict(mapping or {}),
                     dict(flatten or {}), channels_last, tuple(relu_inputs), tuple(pool_inputs), ignore_index, train,
                     tuple(dtypes), matmul_precision, seed)  # fmt: skip
    port = port_config(torch_side, args, nnx_module, rules)
    _check_names(torch_side.state, nnx_module, port)

    def factory(name: str, dtype: str, role: str):
        module = torch_module if name == "torch" else nnx_module
        return get_backend(name, port, dtype=dtype, device=device, module=module)

    report = engine(port, torch_side, args, inputs, targets, factory, device)
    report.environment["model"] = f"torch {torch_side.name} / nnx {type(nnx_module).__name__}"
    return report


@dataclass(frozen=True)
class TorchSide:
    """What the engine needs to know of the torch module (numpy and strings: it can be recorded).

    Attributes:
        name: the module's class name.
        state: the state dict (floats in float32, counters as they are), a tied parameter once.
        buffers: its keys that are running statistics; ``integers`` the counters among them.
        kinds: module path -> kind (:func:`torchref.capture.module_kinds`).
        dropouts: ``{path: p}`` of its dropouts.
    """

    name: str
    state: dict
    buffers: tuple[str, ...]
    integers: tuple[str, ...]
    kinds: dict
    dropouts: dict

    @classmethod
    def of(cls, module) -> TorchSide:
        from torchref import capture  # the harness holds both frameworks

        state, buffers, integers = _torch_state(module, capture)
        _check_batchnorm(module)
        kinds = capture.module_kinds(module)
        return cls(
            type(module).__name__,
            state,
            tuple(buffers),
            tuple(integers),
            kinds,
            capture.dropout_rates(module),
        )


@dataclass(frozen=True)
class Arguments:
    """compare's arguments that shape the engine's run (recorded with a bundle)."""

    loss: object
    optimizer: OptimConfig
    steps: int
    batch_size: int | None
    mapping: dict
    flatten: dict
    channels_last: bool
    relu_inputs: tuple
    pool_inputs: tuple
    ignore_index: int
    train: bool | None
    dtypes: tuple
    matmul_precision: str
    seed: int


def _checked_inputs(inputs, targets, steps: int, batch_size: int | None):
    inputs, targets = batch.prepare(inputs, "inputs"), batch.prepare(targets, "targets")
    n = batch.size(inputs)
    if batch.size(targets) != n:
        raise JaxnetError(f"inputs hold {n} examples but targets {batch.size(targets)}")
    if steps < 0 or (batch_size is not None and not 0 < batch_size <= n):
        raise JaxnetError(f"steps must be >= 0 and batch_size in 1..{n}, got {steps} and {batch_size}")
    return inputs, targets


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


def engine(port: PortConfig, side: TorchSide, args: Arguments, inputs, targets, factory, device: str,
           recorded: dict | None = None) -> Report:  # fmt: skip
    """Every section of a comparison, on backends made by ``factory(name, dtype, role)``: live
    torch, a :class:`~jaxnet.parity.bundle.Recorder` of it, or a recorded reference's
    :class:`~jaxnet.parity.bundle.Replayer` (with ``recorded``: the bundle's environment)."""
    start = time.perf_counter()
    state, n, opt = side.state, batch.size(inputs), args.optimizer
    with session(state, config=port, dtypes=args.dtypes, device=device, matmul_precision=args.matmul_precision,
                 factory=factory, recorded=recorded) as (setup, env):  # fmt: skip
        first = batch.take(inputs, slice(0, 1))
        torch_names, jax_names = captured_names(setup, first)
        missing = [
            k for k in (*args.relu_inputs, *args.pool_inputs) if k not in torch_names or k not in jax_names
        ]
        if missing:
            raise JaxnetError(
                f"not captured on both sides, so no ties can be looked for: {', '.join(missing)}"
            )
        _check_outputs(torch_names, jax_names)
        setup.config = port = replace(port, logits_name=_logits_module(setup, inputs, state))
        torch_only = [k for k in torch_names if k not in jax_names]
        jax_only = [k for k in jax_names if k not in torch_names]
        env["inputs"] = ", ".join(
            f"{k or 'x'}: {a.dtype}{list(a.shape)}" for k, a in batch.leaves(inputs).items()
        )
        if torch_only or jax_only:
            env["not compared"] = (
                f"captured by torch only: {', '.join(torch_only) or '-'}; by jax only: {', '.join(jax_only) or '-'}"
            )
        rows = forward_and_gradient(setup, inputs, targets)
        if port.trains:
            rows += forward_and_gradient(setup, inputs, targets, train=True)
            env["train mode"] = TRAIN_NOTE
        if port.dropouts:
            rows += forward_and_gradient(setup, inputs, targets, shared_masks(setup, inputs, args.seed))
            env["dropout"] = DROPOUT_NOTE
        rows += probes(setup, inputs, targets)
        histories = {}
        if args.steps:
            b = args.batch_size or n
            batches = [np.arange(i * b, (i + 1) * b) % n for i in range(args.steps)]
            opt = (
                opt if opt.schedule == "constant" or opt.total_steps else replace(opt, total_steps=args.steps)
            )
            step_rows, _, histories = steps_section(setup, opt.name, opt, batches, inputs, targets)
            rows += step_rows
    env["first difference"] = diagnose(rows)
    return Report(rows, env, histories, time.perf_counter() - start)


TRAIN_NOTE = (
    "BatchNorm in train mode (batch statistics; the running statistics after a forward and after "
    "every step are rows); dropout off in steps"
)


def _check_loss(loss) -> None:
    if isinstance(loss, str):
        if loss not in PORT_LOSSES:
            raise JaxnetError(
                f"loss must be one of {PORT_LOSSES} or a (torch_loss, jax_loss) pair, got {loss!r}"
            )
        return
    if not (isinstance(loss, tuple) and len(loss) == 2 and all(callable(f) for f in loss)):
        raise JaxnetError(
            "loss must be a name or a pair (torch_loss(outputs, targets), jax_loss(outputs, targets))"
        )


def _torch_state(module, capture) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """The state dict as numpy (floats in float32, counters as they are) without a tied
    parameter's second name, its buffers, and which of them are integer counters."""
    seen, state = {}, {}
    for key, value in module.state_dict().items():
        ptr = (value.data_ptr(), tuple(value.shape), value.dtype) if value.numel() else None
        if ptr is not None and ptr in seen:
            continue  # a tied parameter (a head sharing the embedding): its first name stands
        seen[ptr] = key
        array = value.detach().cpu().numpy()
        state[key] = array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array.copy()
    buffers = [k for k in capture.persistent_buffers(module) if k in state]
    integers = [k for k in buffers if not np.issubdtype(state[k].dtype, np.floating)]
    return state, buffers, integers


def _check_batchnorm(module) -> None:
    import torch

    for path, m in module.named_modules():
        if (
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats
            and m.momentum is None
        ):
            raise JaxnetError(
                f"torch module {path!r}: BatchNorm with momentum=None (a cumulative average) has no "
                "nnx.BatchNorm counterpart; give it a momentum"
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


def _check_outputs(torch_names: list[str], jax_names: list[str]) -> None:
    """The two models' own outputs have the same structure."""
    t = sorted(k for k in torch_names if k == "output" or k.startswith("output."))
    j = sorted(k for k in jax_names if k == "output" or k.startswith("output."))
    if t != j:
        raise JaxnetError(f"the outputs differ in structure: torch gives {t}, nnx gives {j}")


def _logits_module(setup, inputs, state) -> str:
    """The torch module whose output is the model's output (the probe at extreme logits scales
    its weights); ``"output"`` where none with a weight is found."""
    acts = setup.backend("torch", "float32").activations(batch.take(inputs, slice(0, 2)))
    out = acts.get("output")
    found = "output"
    for name, value in acts.items():
        same = (
            name != "output" and out is not None and value.shape == out.shape and np.array_equal(value, out)
        )
        if same and f"{name}.weight" in state:
            found = name
    return found


def _check_names(state: dict[str, np.ndarray], nnx_module, port: PortConfig) -> None:
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


def diagnose(rows: list[Row]) -> str:
    """Where the sides first differ beyond rounding, and what that points at (read from each
    row's ``kind`` and section, never from its name)."""
    failing = [r for r in rows if not r.passed]
    if not failing:
        return "none: every row within K times its measured floor"
    first = failing[0]
    where = f"{first.quantity} ({first.dtype})"
    mode = " in train mode" if "train mode" in first.section else ""
    causes = {
        "output": (
            f"{where}: the first output that differs{mode} while every one before it agrees: that module's "
            "weight layout (mapping, flatten, channels_last) or its operation (padding, eps, approximation, "
            "mask, scale)"
        ),
        "shape": f"{where}: the output's shape differs: the module's configuration (padding, stride, features)",
        "flip": f"{where}: a ReLU or max-pool decision flipped away from a tie: the layer that feeds it",
        "running": (
            f"{where}: the running statistics after a train-mode forward: BatchNorm's momentum (torch's 0.1 is "
            "Flax's 0.9; nnx's default 0.99) or its running variance (torch: unbiased; nnx.BatchNorm: biased)"
        ),
        "loss": f"{where}: the outputs agree; the loss or its reduction differs (mean, ignore_index, log of softmax)",
        "gradient": (
            f"gradient {where}: the forward agrees, the backward does not: a custom gradient, a stop_gradient, "
            "a row torch keeps at zero (Embedding padding_idx), or the loss's reduction"
        ),
        "probe relu": f"{where}: the derivative at a kink: ReLU'(0) (torch: 0; jnp.maximum(x, 0): 0.5)",
        "probe extreme": f"{where}: the loss at extreme logits: log of softmax instead of log_softmax / logsumexp",
    }
    if first.kind in causes:
        return causes[first.kind]
    return (
        f"{first.section}: {where}: forward and gradients agree, the optimizer step does not: the update rule "
        "(eps placement, weight decay and its mask, bias correction, schedule, clipping) or, for a running "
        "statistic, BatchNorm's momentum in training"
    )
