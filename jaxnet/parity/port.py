"""``compare``: the parity engine on any PyTorch module and its Flax NNX port.

The same machinery as ``jaxnet parity`` (measured floors, teacher-forced steps, explained
free-running divergence), on the user's two modules: the torch module's weights are carried
onto the port by module path (:mod:`jaxnet.parity.pairing`), every named submodule's output is
captured on both sides (torch forward hooks, ``nnx.capture``) and compared, then the loss,
every gradient, the probes, and optimizer steps. A report says *where* they first differ
(:mod:`jaxnet.parity.diagnosis`) and whether that is rounding (within K times the measured
floor) or not. Arguments are checked in :mod:`jaxnet.parity.arguments`, shared with ``record``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from jaxnet import batch
from jaxnet.config import OptimConfig, PortConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity import outcomes
from jaxnet.parity.arguments import Arguments, TorchSide, prepare
from jaxnet.parity.builtin import session
from jaxnet.parity.diagnosis import diagnose
from jaxnet.parity.layers import DROPOUT_NOTE, captured_names, forward_and_gradient, shared_masks
from jaxnet.parity.pairing import check_names, port_config
from jaxnet.parity.probes import probes
from jaxnet.parity.report import Report
from jaxnet.parity.sections import steps_section
from jaxnet.rules import Rule


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

    The port gets the torch module's weights and buffers (its own initialisation is not used:
    build it abstractly, ``nnx.eval_shape(lambda: Port(...))``, and its initialisers never run,
    each one compiled program per parameter shape on a CPU), in float32 and in float64. Rows (``report.rows``) are judged against floors measured in this
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

    torch_side, args, inputs, targets = prepare(
        torch_module, inputs, targets, loss=loss, optimizer=optimizer, steps=steps, batch_size=batch_size,
        mapping=mapping, flatten=flatten, channels_last=channels_last, relu_inputs=relu_inputs,
        pool_inputs=pool_inputs, ignore_index=ignore_index, train=train, dtypes=dtypes,
        matmul_precision=matmul_precision, seed=seed,
    )  # fmt: skip
    port = port_config(torch_side, args, nnx_module, rules)
    check_names(torch_side.state, nnx_module, port)

    def factory(name: str, dtype: str, role: str):
        module = torch_module if name == "torch" else nnx_module
        return get_backend(name, port, dtype=dtype, device=device, module=module)

    report = engine(port, torch_side, args, inputs, targets, factory, device)
    report.environment["model"] = f"torch {torch_side.name} / nnx {type(nnx_module).__name__}"
    return report


def engine(port: PortConfig, side: TorchSide, args: Arguments, inputs, targets, factory, device: str,
           recorded: dict | None = None) -> Report:  # fmt: skip
    """Every section of a comparison, on backends made by ``factory(name, dtype, role)``: live
    torch, a :class:`~jaxnet.parity.bundle.Recorder` of it, or a recorded reference's
    :class:`~jaxnet.parity.bundle.Replayer` (with ``recorded``: the bundle's environment)."""
    start = time.perf_counter()
    state, n, opt = side.state, batch.size(inputs), args.optimizer
    with session(state, config=port, dtypes=args.dtypes, device=device, matmul_precision=args.matmul_precision,
                 factory=factory, recorded=recorded) as (setup, env):  # fmt: skip
        # the whole batch, not one example: the programs it compiles serve the forward rows
        torch_names, jax_names = captured_names(setup, inputs)
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
            step_rows, tf, histories = steps_section(setup, opt.name, opt, batches, inputs, targets)
            rows += step_rows
            if outcomes.applies(port.loss, args.steps, args.batch_size, n):
                rows += outcomes.port_outcomes(setup, opt.name, opt, batches, inputs, targets, tf)
                env["outcome"] = outcomes.NOTE
    env["first difference"] = diagnose(rows)
    return Report(rows, env, histories, time.perf_counter() - start)


TRAIN_NOTE = (
    "BatchNorm in train mode (batch statistics; the running statistics after a forward and after "
    "every step are rows); dropout off in steps. Every example depends on its whole batch through "
    "the statistics, so a free-running divergence explained by a ReLU tie is attributed to that "
    "step's batch (the flip moves every example's gradient), not to the one example named; step "
    "floors add the spread of the reference's step with the batch reversed (another order of the "
    "statistics' sums), normwise"
)


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
