"""``diagnose``: where a comparison's two sides first differ beyond rounding, and what that
points at, read from each row's structured ``kind`` (:class:`~jaxnet.parity.report.Row`) and
section, never from the text of its name."""

from __future__ import annotations

from jaxnet.parity.report import Row


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
        "probe bend": (
            f"{where}: with pre-activations at the bend of GELU-like activations: the activation's form "
            "(GELU exact against its tanh approximation, SiLU, Mish, ELU's alpha) in the module that feeds it; "
            "in a network of ReLUs, a pre-activation the scaled weights put within rounding of 0 (pass "
            "relu_inputs so that ties are looked for)"
        ),
        "probe pool": (
            f"{where}: where max-pool windows tie: the pool's tie rule (torch and nnx.max_pool send the gradient "
            "to the first maximum; a reshape-and-max pool splits it between the ties)"
        ),
        "outcome": (
            f"{first.section}: {where}: every step agreed, the end of the free-running run does not: what the "
            "steps do not see (the data order, the evaluation, the schedule past the compared steps)"
        ),
    }
    if first.kind in causes:
        return causes[first.kind]
    return (
        f"{first.section}: {where}: forward and gradients agree, the optimizer step does not: the update rule "
        "(eps placement, weight decay and its mask, bias correction, schedule, clipping) or, for a running "
        "statistic, BatchNorm's momentum in training"
    )
