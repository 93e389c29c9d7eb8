"""The tutorial's training recipe in PyTorch: loss, gradients, optimizers, loops.

Plain arguments in (sizes, learning rate, numpy or tensor batches), so the reference stays
independent of jaxnet. Optimizer state goes out and comes in as a dict of numpy arrays keyed
``"<param name>.<state name>"`` with torch's own state names, the checkpoint's currency.
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

loss_fn = nn.CrossEntropyLoss()  # mean over the batch of -log_softmax(logits)[label]


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_and_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss = loss_fn
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss and ``d loss / d param`` for every named parameter, via ``loss.backward()``.

    ``backward()`` *accumulates* into ``.grad``, so the gradients are cleared before and after:
    a later ``optimizer.step()`` must not see these. ``loss_fn``: the tutorial's cross-entropy
    unless given (``torchref.cnn.loss_fn`` for the CNN).
    """
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 1e-3,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    rho: float = 0.9,
    no_decay: tuple[str, ...] = (),
    clip_norm: float = 0.0,
) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` / ``Adam`` / ``AdamW`` / ``Adadelta`` with every hyperparameter explicit.

    ``rho`` is Adadelta's only (its running-average decay); ``eps`` is passed as given, so an
    Adadelta caller wants torch's 1e-6, not the Adam default here.

    ``no_decay``: ``fnmatch`` patterns of parameter names (``model.named_parameters()``) put in
    a second parameter group with ``weight_decay=0``, the usual recipe::

        decay = [p for n, p in model.named_parameters() if not any(fnmatchcase(n, pat) ...)]
        groups = [{"params": decay}, {"params": rest, "weight_decay": 0.0}]

    ``clip_norm > 0``: ``nn.utils.clip_grad_norm_(model.parameters(), clip_norm)`` before every
    ``step()``, registered as the optimizer's step pre-hook: where a training loop calls it
    (after ``backward()``), and so also for gradients set by hand before ``step()``.
    """
    named = list(model.named_parameters())
    every = [p for _, p in named]
    params: list = every
    if no_decay:
        off = [any(fnmatch.fnmatchcase(n, pattern) for pattern in no_decay) for n, _ in named]
        groups = [
            {"params": [p for p, o in zip(every, off, strict=True) if not o]},
            {"params": [p for p, o in zip(every, off, strict=True) if o], "weight_decay": 0.0},
        ]
        params = [g for g in groups if g["params"]]  # torch refuses an empty group
    optimizer = _optimizer(params, name, lr, momentum, nesterov, weight_decay, betas, eps, rho)
    if clip_norm:

        def clip(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            nn.utils.clip_grad_norm_(every, clip_norm)

        optimizer.register_step_pre_hook(clip)
    return optimizer


def _optimizer(params, name, lr, momentum, nesterov, weight_decay, betas, eps, rho) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 0, the ``lr_lambda`` of Hugging Face's
    ``get_cosine_schedule_with_warmup(optimizer, warmup, total)`` (``num_cycles=0.5``)::

        t < W:  t / W
        else:   0.5 * (1 + cos(pi * (t - W) / (T - W)))
    """
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str = "constant",
    total_steps: int = 0,
    gamma: float = 0.1,
    step: int = 0,
    step_size: int = 0,
    warmup_steps: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step scheduler (call ``.step()`` after every optimizer step), fast-forwarded to ``step``.

    ``cosine``: ``CosineAnnealingLR(T_max=total_steps)``, to 0. ``step``: ``StepLR`` with
    ``step_size`` (0: ``total_steps // 3``). ``warmup-cosine``: ``LambdaLR`` with
    :func:`warmup_cosine_factor` (``warmup_steps`` up, the rest down to 0 at ``total_steps``).
    Fast-forwarding replays the scheduler's own recursion, so a resumed run gets the same
    learning rates as an uninterrupted one.
    """
    if schedule == "constant":
        return None
    if schedule == "warmup-cosine":
        factor = functools.partial(warmup_cosine_factor, warmup=warmup_steps, total=total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    elif schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=step_size or max(1, total_steps // 3), gamma=gamma
        )
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    for _ in range(step):
        optimizer._opt_called = True  # type: ignore[attr-defined]  # no "step before optimizer" warning
        sched.step()
    return sched


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Loss = loss_fn,
) -> torch.Tensor:
    """One step of the tutorial: forward, loss, ``backward()``, ``step()``, ``zero_grad()``."""
    pred = model(x)
    loss = loss_fn(pred, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def train_loop(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    size: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    log: Callable[[str], None] | None = print,
) -> None:
    """The tutorial's ``train_loop``: prints ``loss: ...  [current/size]`` every 100 batches."""
    model.train()
    current = 0  # samples seen so far, the tutorial's batch * batch_size + len(X)
    for batch, (x, y) in enumerate(batches):
        loss = train_step(model, optimizer, x, y)
        if scheduler is not None:
            scheduler.step()
        current += len(x)
        if batch % 100 == 0 and log is not None:
            log(f"loss: {loss.item():>7f}  [{current:>5d}/{size:>5d}]")


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
    loss_fn: Loss = loss_fn,
) -> tuple[int, float]:
    """``(correct, avg_loss)`` over a split; avg_loss is the mean of per-batch mean losses."""
    model.eval()
    num_batches = (len(labels) + batch_size - 1) // batch_size
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            x, y = images[i : i + batch_size], labels[i : i + batch_size]
            pred = model(x)
            test_loss += loss_fn(pred, y).item()
            correct += (pred.argmax(1) == y).sum().item()
    return int(correct), test_loss / num_batches


def test_loop(
    images: torch.Tensor, labels: torch.Tensor, model: nn.Module, batch_size: int = 64
) -> tuple[int, float]:
    """The tutorial's ``test_loop``: prints the ``Test Error`` block."""
    correct, avg_loss = evaluate(model, images, labels, batch_size)
    print(f"Test Error: \n Accuracy: {(100 * correct / len(labels)):>0.1f}%, Avg loss: {avg_loss:>8f} \n")
    return correct, avg_loss


# ---------------------------------------------------------------------------- optimizer state

_STATE_NAMES = ("momentum_buffer", "exp_avg", "exp_avg_sq", "square_avg", "acc_delta")


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Per-parameter state as ``{"linear_relu_stack.0.weight.exp_avg": array, ...}``."""
    out: dict[str, np.ndarray] = {}
    for name, param in model.named_parameters():
        for key, value in optimizer.state.get(param, {}).items():
            if key in _STATE_NAMES and value is not None:
                out[f"{name}.{key}"] = value.detach().cpu().numpy().copy()
    return out


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, np.ndarray], step: int
) -> None:
    """Inverse of :func:`optimizer_state`; ``step`` restores the optimizer's own count (Adam's
    bias correction reads it; Adadelta only keeps it)."""
    counts_steps = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW | torch.optim.Adadelta)
    for name, param in model.named_parameters():
        entries = {k: state[f"{name}.{k}"] for k in _STATE_NAMES if f"{name}.{k}" in state}
        if not entries:
            continue
        restored = {
            k: torch.tensor(v, device=param.device) for k, v in entries.items()
        }  # torch-owned, aligned
        if counts_steps:
            restored["step"] = torch.tensor(float(step), dtype=torch.float32)
        optimizer.state[param] = restored
