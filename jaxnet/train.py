"""The tutorial's recipe as pure JAX functions: loss, gradients, optimizers, steps, epochs.

Where torch mutates (``loss.backward()`` fills ``.grad``, ``optimizer.step()`` changes the
parameters in place), JAX returns new values::

    loss, grads = jax.value_and_grad(loss_fn)(params, graphdef, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

Optimizers are built from optax pieces in the order torch applies them (see
:func:`make_optimizer`), and their state converts to torch's words (``momentum_buffer``,
``exp_avg``, ``exp_avg_sq``, ``square_avg``, ``acc_delta``) for checkpoints either
backend can resume.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnet.config import OptimConfig
from jaxnet.layout import BUILT_IN, Layout
from jaxnet.model import from_torch_layout, to_torch_layout

LOSSES = ("cross_entropy", "nll")


def per_example_loss(outputs: jax.Array, labels: jax.Array, loss: str = "cross_entropy") -> jax.Array:
    """Each example's loss: ``cross_entropy`` of logits (``nn.CrossEntropyLoss``:
    ``logsumexp(z) - z[label]``), or ``nll`` of log-probabilities (``F.nll_loss``, for a model
    ending in ``log_softmax``: ``-log_p[label]``)."""
    if loss == "nll":
        return -jnp.take_along_axis(outputs, labels[:, None], axis=1)[:, 0]
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)


def mean_loss(outputs: jax.Array, labels: jax.Array, loss: str = "cross_entropy") -> jax.Array:
    """The batch's loss as torch's criteria reduce it by default: the mean over the batch."""
    return per_example_loss(outputs, labels, loss).mean()


def loss_fn(
    params: nnx.State,
    graphdef: nnx.GraphDef,
    x: jax.Array,
    y: jax.Array,
    loss: str = "cross_entropy",
    key: jax.Array | None = None,
) -> jax.Array:
    """The mean loss as a pure function of ``params`` (the thing ``jax.grad`` differentiates).

    ``key``: train mode for a model with dropout (``model(x, key=key)`` draws its masks).
    """
    model = nnx.merge(graphdef, params)
    outputs = model(x) if key is None else model(x, key=key)
    return mean_loss(outputs, y, loss)


loss_and_grads = jax.value_and_grad(loss_fn)


# ---------------------------------------------------------------------------- optimizers


def make_schedule(cfg: OptimConfig, dtype: str = "float32") -> optax.ScalarOrSchedule:
    """The learning rate per step, exactly as ``torchref.make_scheduler``'s torch schedulers
    give it: a table computed on the host with :func:`torch_lr_table`, indexed by the count.

    optax's own schedules give the same values up to rounding, but round differently:
    evaluated in float32 from the int32 count, ``optax.cosine_decay_schedule`` loses 1e-4 of
    ``lr`` near the end of the decay (``1 + cos`` cancels), while torch computes in double.
    """
    if cfg.schedule == "constant":
        return cfg.lr
    table = jnp.asarray(torch_lr_table(cfg), dtype)
    return lambda count: table[jnp.minimum(count, cfg.total_steps)]


def torch_lr_table(cfg: OptimConfig) -> np.ndarray:
    """``lr`` before each optimizer step 0..total_steps, in double, by torch's own recurrences.

    ``CosineAnnealingLR(T_max=T)`` (eta_min 0) multiplies by
    ``(1 + cos(pi t / T)) / (1 + cos(pi (t - 1) / T))`` at each step; ``StepLR`` by ``gamma``
    every ``step_every`` steps; ``warmup-cosine`` is ``LambdaLR``'s ``lr * factor(t)`` with
    :func:`warmup_cosine_factor`. The same double operations in the same order, so the same bits.
    """
    if cfg.total_steps < 1:
        raise ValueError(f"schedule {cfg.schedule!r} needs total_steps >= 1")
    if cfg.schedule == "warmup-cosine":  # closed form: LambdaLR's base_lr * lr_lambda(last_epoch)
        return np.array(
            [
                cfg.lr * warmup_cosine_factor(t, cfg.warmup_steps, cfg.total_steps)
                for t in range(cfg.total_steps + 1)
            ]
        )
    lrs, total = [cfg.lr], cfg.total_steps
    for t in range(1, total + 1):
        if cfg.schedule == "cosine":
            factor = (1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total))
            lrs.append(factor * (lrs[-1] - 0.0) + 0.0)
        else:
            lrs.append(lrs[-1] * cfg.gamma if t % cfg.step_every == 0 else lrs[-1])
    return np.array(lrs)


def warmup_cosine_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor of linear warm-up then cosine decay, written as Hugging Face's
    ``get_cosine_schedule_with_warmup`` writes it (``num_cycles=0.5``), in double::

        t < W:  t / max(1, W)
        else:   max(0, 0.5 * (1 + cos(pi * 0.5 * 2 * (t - W) / max(1, T - W))))

    ``torchref.warmup_cosine_factor`` is the reference's copy (torchref imports no jaxnet);
    the tests hold the two tables equal bit for bit.

    Example:
        >>> [warmup_cosine_factor(t, 2, 4) for t in range(5)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` as an optax transformation.

    torch computes ``total = ||(||g_1||, ..., ||g_n||)||`` (each gradient's 2-norm, then the
    2-norm of those), ``coef = max_norm / (total + 1e-6)``, which ``Tensor.__rtruediv__``
    evaluates as ``total_plus.reciprocal() * max_norm``, clamps it to at most 1 and multiplies
    every gradient by it, always (a coefficient of 1 leaves them as they were). All of it in
    the gradients' dtype. ``optax.clip_by_global_norm`` differs: no 1e-6, the norm of the
    concatenation, and ``g * max_norm / total`` only where ``total > max_norm``; for a norm
    near 1 the 1e-6 alone moves the float64 update by 1e-6 of itself.

    It goes first in the chain: torch clips what ``backward()`` left in ``.grad``, before
    the optimizer adds weight decay or momentum. Stateless.

    Example:
        >>> tx = optax.chain(clip_by_global_norm(1.0), optax.scale_by_learning_rate(0.1))
    """

    def update(updates, state, params=None):
        del params
        norms = [jnp.sqrt(jnp.sum(g * g)) for g in jax.tree.leaves(updates)]  # torch._foreach_norm
        total = jnp.sqrt(jnp.sum(jnp.stack(norms) ** 2))  # vector_norm of the stacked norms
        # reciprocal then product, kept apart: XLA would fold (1 / a) * b into one division
        coef = jnp.minimum(jax.lax.optimization_barrier(1 / (total + 1e-6)) * max_norm, 1.0)
        return jax.tree.map(lambda g: g * coef, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(cfg: OptimConfig, layout: Layout = BUILT_IN) -> Callable[[Any], Any]:
    """The params-shaped tree of bools optax's ``mask=`` takes: True where the parameter's torch
    name (by ``layout``) matches none of ``cfg.no_decay`` (:meth:`OptimConfig.decays`)."""

    def mask(tree):
        return jax.tree_util.tree_map_with_path(lambda path, _: cfg.decays(layout.torch_name(path)), tree)

    return mask


def make_optimizer(
    cfg: OptimConfig, dtype: str = "float32", layout: Layout = BUILT_IN
) -> optax.GradientTransformation:
    """optax chains with torch.optim's semantics.

    - sgd: ``g += wd * p`` (coupled decay, before momentum), ``buf = m * buf + g`` (the
      first buffer is ``g`` itself, as ``optax.trace`` starts from zeros), nesterov
      ``g + m * buf``; ``p -= lr * g``.
    - adam: coupled L2 decay ``g += wd * p``, then :func:`scale_by_adam` (eps outside the sqrt).
    - adamw: :func:`scale_by_adam` then decoupled ``+ wd * p``, both scaled by ``lr``, as in torch.
    - adadelta: coupled decay ``g += wd * p``, then :func:`scale_by_adadelta` (``rho``, eps
      inside both square roots); ``p -= lr * delta``.
    - ``clip_norm``: :func:`clip_by_global_norm` first, on the gradients as given.
    - ``no_decay``: the decay masked off the parameters whose torch names (by ``layout``)
      match a pattern, as torch's second parameter group with ``weight_decay=0``.

    Example:
        >>> tx = make_optimizer(OptimConfig(name="sgd", lr=0.1, momentum=0.9))
    """
    b1, b2 = cfg.betas
    parts: list[optax.GradientTransformation] = []
    mask = decay_mask(cfg, layout) if cfg.no_decay else None
    if cfg.clip_norm:
        parts.append(clip_by_global_norm(cfg.clip_norm))
    if cfg.name in ("sgd", "adam", "adadelta") and cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    if cfg.name == "sgd" and cfg.momentum:
        parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    if cfg.name in ("adam", "adamw"):
        parts.append(scale_by_adam(b1=b1, b2=b2, eps=cfg.eps))
    if cfg.name == "adamw" and cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    if cfg.name == "adadelta":
        parts.append(scale_by_adadelta(rho=cfg.rho, eps=cfg.eps))
    parts.append(optax.scale_by_learning_rate(make_schedule(cfg, dtype)))
    return optax.chain(*parts)


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` with ``torch.optim.Adam``'s bias correction.

    Both compute ``m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^t)`` and
    ``v_hat = v / (1 - b2^t)``. torch evaluates ``1 - b^t`` in double precision, whatever the
    parameters' dtype. optax evaluates it in the parameters' dtype from ``b`` rounded to it: in
    float32, ``1 - 0.999f = 9.99987e-4``, 1.3e-5 off, which moves every early step by 6e-6 of
    ``lr`` (jaxnet's teacher-forced parity rows caught it at 15-35x their bound). Here float64
    parameters get ``1 - b^t`` in float64 (the same arithmetic as torch's, cancellation
    included), float32 ones ``-expm1(t log b)``, torch's double value to within a few ulps.
    The state is optax's ``ScaleByAdamState``.

    Example:
        >>> tx = optax.chain(scale_by_adam(), optax.scale_by_learning_rate(1e-3))
    """

    def correction(b: float, t: jax.Array) -> jax.Array:  # 1 - b^t
        return 1 - b**t if t.dtype == jnp.float64 else -jnp.expm1(t * math.log(b))

    def init(params):
        zeros = optax.tree.zeros_like
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(params), nu=zeros(params))

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)

        def scale(m, v):
            t = count.astype(m.dtype)
            return (m / correction(b1, t)) / (jnp.sqrt(v / correction(b2, t)) + eps)

        return jax.tree.map(scale, mu, nu), optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> optax.GradientTransformation:
    """``optax.scale_by_adadelta`` with ``torch.optim.Adadelta``'s order of operations.

    Both compute, per element, ``E[g^2] = rho E[g^2] + (1 - rho) g^2``,
    ``delta = sqrt(E[dx^2] + eps) / sqrt(E[g^2] + eps) * g`` (eps inside both square roots,
    the quotient before the product) and ``E[dx^2] = rho E[dx^2] + (1 - rho) delta^2``; the
    update is ``delta`` (``p -= lr * delta`` follows in the chain). The mathematics is the
    same; the rounding is not:

    - torch's ``avg.mul_(rho).addcmul_(g, g, value=1 - rho)`` multiplies ``((1 - rho) * g) * g``;
      optax's ``update_moment`` ``(1 - rho) * (g * g)``, which rounds differently in about one
      float64 element in ten, fed back every step. Here the sum is written
      ``((1 - rho) * g) * g + avg * rho``: torch's vectorised CPU kernel contracts it into
      ``fma((1 - rho) * g, g, avg * rho)`` and XLA's CPU backend, which fuses the left product
      of a sum, does the same (``square_avg`` measured bit-identical to torch's, float64).
    - XLA rewrites ``a / sqrt(b)`` into ``a * rsqrt(b)``, an extra rounding that moves about a
      third of float64 quotients by an ulp; an optimisation barrier on ``sqrt(b)`` keeps
      torch's square root then division.

    What remains is torch's: its CPU float64 ``sqrt`` (MKL's vector sqrt) is not correctly
    rounded in ~1.4% of elements, so ``delta`` can differ by an ulp or two. torch's ``step``
    count is not kept (the update never reads it; a checkpoint carries the step). The state
    is optax's ``ScaleByAdaDeltaState``: ``e_g`` is torch's ``square_avg``, ``e_x`` its
    ``acc_delta``.

    Example:
        >>> tx = optax.chain(scale_by_adadelta(0.9, 1e-6), optax.scale_by_learning_rate(1.0))
    """

    def init(params):
        zeros = optax.tree.zeros_like
        return optax.ScaleByAdaDeltaState(e_g=zeros(params), e_x=zeros(params))

    def update(updates, state, params=None):
        del params

        def average(avg, x):  # avg.mul_(rho).addcmul_(x, x, value=1 - rho)
            return ((1 - rho) * x) * x + avg * rho

        e_g = jax.tree.map(average, state.e_g, updates)

        def step(g, sq, acc):  # std = sqrt(sq + eps); delta = sqrt(acc + eps); delta.div_(std).mul_(g)
            std = jax.lax.optimization_barrier(jnp.sqrt(sq + eps))  # keeps XLA from a * rsqrt(b)
            return jnp.sqrt(acc + eps) / std * g

        delta = jax.tree.map(step, updates, e_g, state.e_x)
        e_x = jax.tree.map(average, state.e_x, delta)
        return delta, optax.ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return optax.GradientTransformation(init, update)


def export_opt_state(opt_state: tuple, step: int, layout: Layout = BUILT_IN) -> dict[str, np.ndarray]:
    """optax chain state -> ``{"<torch param key>.<torch state name>": array}``.

    Empty before the first step, as torch's optimizer state is.
    """
    if step == 0:
        return {}
    out: dict[str, np.ndarray] = {}
    for part in opt_state:
        named = {}
        if isinstance(part, optax.TraceState):
            named = {"momentum_buffer": part.trace}
        elif isinstance(part, optax.ScaleByAdamState):
            named = {"exp_avg": part.mu, "exp_avg_sq": part.nu}
        elif isinstance(part, optax.ScaleByAdaDeltaState):
            named = {"square_avg": part.e_g, "acc_delta": part.e_x}
        for state_name, tree in named.items():
            out |= {f"{k}.{state_name}": v for k, v in to_torch_layout(tree, layout).items()}
    return out


def import_opt_state(
    opt_state: tuple, state: dict[str, np.ndarray], step: int, layout: Layout = BUILT_IN
) -> tuple:
    """Inverse of :func:`export_opt_state`: fill a fresh ``tx.init`` state, set counts to ``step``."""

    def pick(tree, state_name: str):
        sub = {k.removesuffix("." + state_name): v for k, v in state.items() if k.endswith("." + state_name)}
        return from_torch_layout(tree, sub, layout) if sub else tree

    def count():  # a fresh buffer per counter: donation rejects one buffer passed twice
        return jnp.asarray(step, dtype=jnp.int32)

    parts = []
    for part in opt_state:
        if isinstance(part, optax.TraceState):
            part = part._replace(trace=pick(part.trace, "momentum_buffer"))
        elif isinstance(part, optax.ScaleByAdamState):
            part = part._replace(count=count(), mu=pick(part.mu, "exp_avg"), nu=pick(part.nu, "exp_avg_sq"))
        elif isinstance(part, optax.ScaleByAdaDeltaState):
            part = part._replace(e_g=pick(part.e_g, "square_avg"), e_x=pick(part.e_x, "acc_delta"))
        elif isinstance(part, optax.ScaleByScheduleState):
            part = part._replace(count=count())
        parts.append(part)
    return tuple(parts)


# ---------------------------------------------------------------------------- steps and epochs


def train_step(graphdef, tx, params, opt_state, x, y, key=None, loss="cross_entropy"):
    """One step: ``(params, opt_state, x, y) -> (params, opt_state, loss)``; ``key`` for dropout."""
    value, grads = loss_and_grads(params, graphdef, x, y, loss, key)
    params, opt_state = apply_gradients(tx, params, opt_state, grads)
    return params, opt_state, value


def train_steps(
    graphdef, tx, params, opt_state, images, labels, batch_idx, keys=None, shard=None, loss="cross_entropy"
):
    """``len(batch_idx)`` steps as one ``lax.scan``; ``batch_idx`` is int ``[steps, batch]``.

    ``images`` and ``labels`` stay on the device; each step gathers its batch by index.
    ``keys``, one per step, put a model with dropout in train mode. ``shard``, if given, places
    each gathered batch (``jax.lax.with_sharding_constraint`` over a device mesh): XLA then
    splits the step across the devices and sums the gradient over them, the same mean over
    the whole batch. Returns ``(params, opt_state, losses[steps])``.
    """
    shard = shard or (lambda x: x)

    def body(carry, step):
        params, opt_state = carry
        idx, key = step
        x, y = shard(images[idx]), shard(labels[idx])
        params, opt_state, value = train_step(graphdef, tx, params, opt_state, x, y, key, loss)
        return (params, opt_state), value

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (batch_idx, keys))
    return params, opt_state, losses


def evaluate(graphdef, params, images, labels, batch_size: int = 64, loss: str = "cross_entropy"):
    """``(correct, avg_loss)`` in one forward pass over the whole split.

    ``avg_loss`` is the tutorial's: the mean over batches of each batch's mean loss.
    """
    logits = nnx.merge(graphdef, params)(images)
    per_example = per_example_loss(logits, labels, loss)
    batch_of = jnp.arange(labels.shape[0]) // batch_size
    num_batches = -(-labels.shape[0] // batch_size)
    sums = jax.ops.segment_sum(per_example, batch_of, num_segments=num_batches)
    counts = jax.ops.segment_sum(jnp.ones_like(per_example), batch_of, num_segments=num_batches)
    correct = jnp.sum(jnp.argmax(logits, axis=1) == labels)
    return correct, jnp.mean(sums / counts)


def apply_gradients(tx, params, opt_state, grads):
    """The optimizer half of a step, with given gradients: ``(params, opt_state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def compiled(graphdef, tx, shard=None, loss="cross_entropy"):
    """jitted ``train_step``, ``train_steps`` and ``apply_gradients`` for one model and optimizer.

    ``params`` and ``opt_state`` are donated: XLA updates them in place instead of copying.
    ``shard``: see :func:`train_steps`.
    """
    return (
        jax.jit(functools.partial(train_step, graphdef, tx, loss=loss), donate_argnums=(0, 1)),
        jax.jit(functools.partial(train_steps, graphdef, tx, shard=shard, loss=loss), donate_argnums=(0, 1)),
        jax.jit(functools.partial(apply_gradients, tx), donate_argnums=(0, 1)),
    )
