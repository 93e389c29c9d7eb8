"""compare's and record's arguments, checked and normalised once for both.

:func:`prepare` turns what a user passes (a torch module, inputs, targets, keyword options) into
what the engine runs on: a :class:`TorchSide` (the torch module as numpy and strings, so it can
be recorded), the :class:`Arguments` that shape the run, and the inputs and targets as checked
pytrees. Bad input is a one-line :class:`~jaxnet.errors.JaxnetError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxnet import batch
from jaxnet.config import PORT_LOSSES, OptimConfig
from jaxnet.errors import JaxnetError


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


def prepare(
    torch_module, inputs, targets, *, loss, optimizer, steps, batch_size, mapping, flatten, channels_last,
    relu_inputs, pool_inputs, ignore_index, train, dtypes, matmul_precision, seed,
) -> tuple[TorchSide, Arguments, object, object]:  # fmt: skip
    """``(side, args, inputs, targets)`` from compare's (or record's) arguments, each checked:
    the loss, the inputs and targets (numeric pytrees of as many examples), ``steps`` and
    ``batch_size``, and the torch module (a BatchNorm without momentum is refused)."""
    check_loss(loss)
    inputs, targets = checked_inputs(inputs, targets, steps, batch_size)
    side = TorchSide.of(torch_module)
    args = Arguments(
        loss,
        optimizer or OptimConfig(name="sgd", lr=0.01),
        steps,
        batch_size,
        dict(mapping or {}),
        dict(flatten or {}),
        channels_last,
        tuple(relu_inputs),
        tuple(pool_inputs),
        ignore_index,
        train,
        tuple(dtypes),
        matmul_precision,
        seed,
    )
    return side, args, inputs, targets


def checked_inputs(inputs, targets, steps: int, batch_size: int | None):
    """Inputs and targets as pytrees of numpy arrays with the same number of examples."""
    inputs, targets = batch.prepare(inputs, "inputs"), batch.prepare(targets, "targets")
    n = batch.size(inputs)
    if batch.size(targets) != n:
        raise JaxnetError(f"inputs hold {n} examples but targets {batch.size(targets)}")
    if steps < 0 or (batch_size is not None and not 0 < batch_size <= n):
        raise JaxnetError(f"steps must be >= 0 and batch_size in 1..{n}, got {steps} and {batch_size}")
    return inputs, targets


def check_loss(loss) -> None:
    """A built-in loss's name or a pair of callables."""
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
