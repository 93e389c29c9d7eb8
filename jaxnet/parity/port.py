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
from dataclasses import replace

import numpy as np

from jaxnet.config import OptimConfig, PortConfig
from jaxnet.errors import JaxnetError
from jaxnet.layout import Layout
from jaxnet.parity.builtin import session
from jaxnet.parity.layers import DROPOUT_NOTE, captured_names, forward_and_gradient, shared_masks
from jaxnet.parity.report import Report, Row
from jaxnet.parity.sections import steps_section


def compare(
    torch_module,
    nnx_module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: str = "cross_entropy",
    optimizer: OptimConfig | None = None,
    steps: int = 10,
    batch_size: int | None = None,
    mapping: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, int, int]] | None = None,
    channels_last: bool = False,
    relu_inputs: Sequence[str] = (),
    pool_inputs: Sequence[str] = (),
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
    matmul_precision: str = "highest",
    seed: int = 0,
) -> Report:
    """Compare a torch module with its NNX port: forward, loss, gradients, optimizer steps.

    The port gets the torch module's weights (its own initialisation is not used), both in
    float32 and in float64. Rows (``report.rows``) are judged against floors measured in this
    run: torch's float32 result against its float64 result. ``report.environment`` names the
    first layer that differs and what that suggests.

    Args:
        torch_module, nnx_module: the pair; copies are taken (cast, put in eval mode).
        x, y: real inputs in torch's layout (``[N, C, H, W]`` images) and integer labels.
        loss: ``"cross_entropy"`` (the modules return logits) or ``"nll"`` (log-probabilities).
        optimizer: the step rule compared over ``steps`` steps (default: SGD, lr 0.01);
            ``steps=0``: the forward and the gradients only.
        batch_size: examples per step, taken from ``x`` in order, cycling (default: all).
        mapping: torch module path -> NNX path, where they are named differently (NNX paths
            without ``nnx.Sequential``'s ``layers`` level).
        flatten: torch ``Linear`` path -> ``(C, H, W)``, for a Linear after a channels-last
            flatten (its columns are permuted).
        channels_last: the port takes and produces NHWC where torch has NCHW.
        relu_inputs, pool_inputs: outputs a ReLU or a 2x2 max-pool reads (torch names), where
            ties between the sides are looked for.

    Raises:
        JaxnetError: parameters that do not line up (listing both sides), a shape mismatch,
            state other than parameters, a tie name that is not captured.

    Example:
        >>> from jaxnet import parity                                     # doctest: +SKIP
        >>> report = parity.compare(torch_net, nnx_net, x, y, loss="nll",
        ...                         channels_last=True, flatten={"fc1": (64, 12, 12)})
        >>> parity.print_table(report); report.passed
    """
    from torchref import capture  # the harness holds both frameworks

    start = time.perf_counter()
    if loss not in ("cross_entropy", "nll"):
        raise JaxnetError(f"loss must be 'cross_entropy' (logits) or 'nll' (log-probabilities), got {loss!r}")
    if steps < 0 or (batch_size is not None and not 0 < batch_size <= len(x)):
        raise JaxnetError(f"steps must be >= 0 and batch_size in 1..{len(x)}, got {steps} and {batch_size}")
    if list(torch_module.buffers()):
        names = [n for n, _ in torch_module.named_buffers()]
        raise JaxnetError(f"the torch module has buffers, not compared yet: {', '.join(names[:5])}")
    layout = Layout(dict(mapping or {}), dict(flatten or {}), channels_last)
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in torch_module.state_dict().items()}
    port = PortConfig(
        shapes={k: tuple(v.shape) for k, v in state.items()},
        loss=loss,
        relu_inputs=tuple(relu_inputs),
        pool_inputs=tuple(pool_inputs),
        dropouts=capture.dropout_rates(torch_module),
        layout=layout,
    )
    _check_names(state, nnx_module, port)
    opt = optimizer or OptimConfig(name="sgd", lr=0.01)
    modules = {"torch": torch_module, "jax": nnx_module}
    x, y = np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64)
    with session(state, config=port, dtypes=dtypes, device=device, matmul_precision=matmul_precision,
                 modules=modules) as (setup, env):  # fmt: skip
        torch_names, jax_names = captured_names(setup, x[:1])
        missing = [n for n in (*relu_inputs, *pool_inputs) if n not in torch_names or n not in jax_names]
        if missing:
            raise JaxnetError(
                f"not captured on both sides, so no ties can be looked for: {', '.join(missing)}"
            )
        torch_only = [n for n in torch_names if n not in jax_names]
        jax_only = [n for n in jax_names if n not in torch_names]
        env["model"] = f"torch {type(torch_module).__name__} / nnx {type(nnx_module).__name__}"
        if torch_only or jax_only:
            env["not compared"] = (
                f"captured by torch only: {', '.join(torch_only) or '-'}; by jax only: {', '.join(jax_only) or '-'}"
            )
        rows = forward_and_gradient(setup, x, y)
        if port.dropouts:
            rows += forward_and_gradient(setup, x, y, shared_masks(setup, x, seed))
            env["dropout"] = DROPOUT_NOTE
        histories = {}
        if steps:
            b = batch_size or len(x)
            batches = [np.arange(i * b, (i + 1) * b) % len(x) for i in range(steps)]
            opt = opt if opt.schedule == "constant" or opt.total_steps else replace(opt, total_steps=steps)
            step_rows, _, histories = steps_section(setup, opt.name, opt, batches, x, y)
            rows += step_rows
    env["first difference"] = diagnose(rows)
    return Report(rows, env, histories, time.perf_counter() - start)


def _check_names(state: dict[str, np.ndarray], nnx_module, port: PortConfig) -> None:
    """Every torch parameter has one NNX parameter of the same shape (after layout), and back."""
    from jaxnet.backends import get_backend

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


def diagnose(rows: list[Row]) -> str:
    """Where the sides first differ beyond rounding, and what that points at."""
    failing = [r for r in rows if not r.passed]
    if not failing:
        return "none: every row within K times its measured floor"
    first = failing[0]
    if first.section.startswith("forward") and first.quantity != "loss" and "flip" not in first.quantity:
        return (
            f"{first.quantity} ({first.dtype}): the first output that differs while every one before it "
            "agrees: that layer's weight layout (mapping, flatten, channels_last) or its operation"
        )
    if first.section.startswith("forward") and "flip" in first.quantity:
        return (
            f"{first.quantity} ({first.dtype}): a ReLU or max-pool decision flipped away from a tie: "
            "the layer that feeds it"
        )
    if first.section.startswith("forward"):
        return f"{first.quantity} ({first.dtype}): the outputs agree; the loss or its reduction differs"
    if first.section.startswith("gradient"):
        return (
            f"gradient {first.quantity} ({first.dtype}): the forward agrees, the backward does not: "
            "a custom gradient, a stop_gradient, or the loss's reduction"
        )
    return (
        f"{first.section}: {first.quantity} ({first.dtype}): forward and gradients agree, the optimizer "
        "step does not: the update rule (eps placement, weight decay, bias correction, schedule)"
    )
