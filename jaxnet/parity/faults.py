"""Realistic porting bugs, planted into the JAX side on request: what the harness must catch.

``jaxnet parity --plant NAME`` runs the report with one of them in place, so a reader sees
which row a bug of that kind trips and by how much; the test suite holds that every one is
caught by the float32 rows alone. Each swaps one function of ``jaxnet.model``,
``jaxnet.models.mlp`` or ``jaxnet.train`` for a subtly wrong version (the mutation-testing idea) and clears JAX's
compiled code on the way in and out, so no correct trace is reused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxnet import model as jmodel
from jaxnet import train as jtrain
from jaxnet.config import OptimConfig
from jaxnet.models import mlp as jmlp


@dataclass(frozen=True)
class Fault:
    description: str
    recipes: tuple[str, ...]  # the step recipes that exercise it (none: forward and probes)
    target: object  # the module whose attribute is swapped
    attribute: str
    wrong: Callable[[Callable], Callable]  # the correct function -> the faulty one
    models: tuple[str, ...] = ("mlp",)  # the models whose parity run reaches the swapped code


def _transposed(correct):
    def load(template, state, *layout):
        key = "linear_relu_stack.2.weight"  # square (512 x 512), so the mistake loads silently
        return correct(template, {**state, key: state[key].T.copy()}, *layout)

    return load


def _relu_grad_one(correct):
    return lambda x: jnp.where(x >= 0, x, 0)  # d/dx at 0 is 1 (torch: 0)


def _log_of_softmax(correct):
    def loss(logits, labels, kind="cross_entropy"):
        log_p = jnp.log(jax.nn.softmax(logits, axis=1))  # underflows to log(0) = -inf
        return -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]

    return loss


def _sum_loss(correct):
    return lambda outputs, labels, kind="cross_entropy": jtrain.per_example_loss(outputs, labels, kind).sum()


def _optimizer(change: Callable[[OptimConfig], optax.GradientTransformation | None]):
    """A make_optimizer that builds ``change(cfg)`` where it returns one, else the correct chain."""

    def wrap(correct):
        def make(cfg: OptimConfig, dtype: str = "float32"):
            faulty = change(cfg, dtype)
            return correct(cfg, dtype) if faulty is None else faulty

        return make

    return wrap


def _decay_after_momentum(cfg, dtype):
    if cfg.name != "sgd" or not cfg.momentum:
        return None
    return optax.chain(
        optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
        optax.add_decayed_weights(cfg.weight_decay),  # torch adds it *before* momentum
        optax.scale_by_learning_rate(jtrain.make_schedule(cfg, dtype)),
    )


def _nesterov_dropped(cfg, dtype):
    if not cfg.nesterov:
        return None
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.trace(decay=cfg.momentum, nesterov=False),
        optax.scale_by_learning_rate(jtrain.make_schedule(cfg, dtype)),
    )


def _adam(cfg, dtype, scale, decay_after_lr=False):
    if cfg.name not in ("adam", "adamw"):
        return None
    b1, b2 = cfg.betas
    parts = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.name == "adam" else []
    parts.append(scale(b1, b2, cfg.eps))
    if cfg.name == "adamw" and not decay_after_lr:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    parts.append(optax.scale_by_learning_rate(jtrain.make_schedule(cfg, dtype)))
    if cfg.name == "adamw" and decay_after_lr:
        parts.append(optax.add_decayed_weights(-cfg.weight_decay))  # p -= wd * p, not lr * wd * p
    return optax.chain(*parts)


def _bias_correction_off_by_one(b1, b2, eps):
    def update(updates, state, params=None):
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count + 1  # one step ahead

        def scale(m, v):
            tt = t.astype(m.dtype)
            c1, c2 = -jnp.expm1(tt * math.log(b1)), -jnp.expm1(tt * math.log(b2))
            return (m / c1) / (jnp.sqrt(v / c2) + eps)

        return jax.tree.map(scale, mu, nu), optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(jtrain.scale_by_adam(b1, b2, eps).init, update)


def _adadelta_eps_outside_sqrt(cfg, dtype):
    """Adadelta as a port from a paper's formula might read: ``sqrt(acc) + eps`` over
    ``sqrt(avg) + eps`` (torch, Zeiler's paper and optax put eps inside both roots)."""
    if cfg.name != "adadelta":
        return None
    rho, eps = cfg.rho, cfg.eps

    def update(updates, state, params=None):
        e_g = jax.tree.map(lambda a, g: rho * a + (1 - rho) * g * g, state.e_g, updates)
        delta = jax.tree.map(
            lambda g, a, x: (jnp.sqrt(x) + eps) / (jnp.sqrt(a) + eps) * g, updates, e_g, state.e_x
        )
        e_x = jax.tree.map(lambda x, d: rho * x + (1 - rho) * d * d, state.e_x, delta)
        return delta, optax.ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    parts = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay else []
    tx = optax.GradientTransformation(jtrain.scale_by_adadelta(rho, eps).init, update)
    return optax.chain(*parts, tx, optax.scale_by_learning_rate(jtrain.make_schedule(cfg, dtype)))


def _schedule_one_step_off(correct):
    def make(cfg, dtype="float32"):
        schedule = correct(cfg, dtype)
        return schedule if cfg.schedule != "cosine" else (lambda count: schedule(count + 1))

    return make


FAULTS: dict[str, Fault] = {
    "transposed-weight": Fault("a 512x512 weight loaded untransposed", (), jmodel, "from_torch_layout", _transposed),
    "relu-grad-at-0": Fault("ReLU'(0) = 1 (jnp.where(x >= 0, x, 0))", (), jmlp, "relu", _relu_grad_one),
    "log-of-softmax": Fault("log(softmax(z)) instead of log_softmax", (), jtrain, "per_example_loss", _log_of_softmax),
    "sum-loss": Fault("the loss summed over the batch, not averaged", (), jtrain, "mean_loss", _sum_loss),
    "decay-after-momentum": Fault(
        "SGD weight decay added after momentum", ("sgd-nesterov-wd-step",), jtrain, "make_optimizer",
        _optimizer(_decay_after_momentum),
    ),
    "nesterov-dropped": Fault(
        "SGD Nesterov momentum dropped", ("sgd-nesterov-wd-step",), jtrain, "make_optimizer", _optimizer(_nesterov_dropped)
    ),
    "adam-eps-in-sqrt": Fault(
        "Adam eps inside the square root", ("adam-l2",), jtrain, "make_optimizer",
        _optimizer(lambda c, d: _adam(c, d, lambda b1, b2, eps: optax.scale_by_adam(b1, b2, eps=0.0, eps_root=eps))),
    ),
    "adam-eps-1e-7": Fault(
        "Adam eps 1e-7 (Keras' default) instead of 1e-8", ("adam-l2",), jtrain, "make_optimizer",
        _optimizer(lambda c, d: _adam(c, d, lambda b1, b2, eps: jtrain.scale_by_adam(b1, b2, 1e-7))),
    ),
    "adam-bias-correction-off-by-one": Fault(
        "Adam bias correction one step ahead", ("adam-l2",), jtrain, "make_optimizer",
        _optimizer(lambda c, d: _adam(c, d, _bias_correction_off_by_one)),
    ),
    "adadelta-eps-outside-sqrt": Fault(
        "Adadelta eps outside the square roots", ("adadelta-step",), jtrain, "make_optimizer",
        _optimizer(_adadelta_eps_outside_sqrt),
    ),
    "cosine-one-step-off": Fault(
        "cosine schedule one step ahead", ("adamw-cosine",), jtrain, "make_schedule", _schedule_one_step_off
    ),
    "adamw-decay-not-scaled-by-lr": Fault(
        "AdamW decay applied as p -= wd p, not lr wd p", ("adamw-cosine",), jtrain, "make_optimizer",
        _optimizer(lambda c, d: _adam(c, d, jtrain.scale_by_adam, decay_after_lr=True)),
    ),
}  # fmt: skip


@contextlib.contextmanager
def planted(name: str) -> Iterator[Fault]:
    """Run the block with fault ``name`` in the JAX side; everything is restored after."""
    from jaxnet.backends.jax import clear_caches

    fault = FAULTS[name]
    correct = getattr(fault.target, fault.attribute)
    traced = fault.attribute not in (
        "make_optimizer",
        "make_schedule",
    )  # those build new step programs anyway
    clear_caches(model=traced)
    setattr(fault.target, fault.attribute, fault.wrong(correct))
    try:
        yield fault
    finally:
        setattr(fault.target, fault.attribute, correct)
        clear_caches(model=traced)
