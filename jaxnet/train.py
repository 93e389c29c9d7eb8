"""The tutorial's recipe as pure JAX functions: loss, gradients, optimizers, steps, epochs.

Where torch mutates (``loss.backward()`` fills ``.grad``, ``optimizer.step()`` changes the
parameters in place), JAX returns new values::

    loss, grads = jax.value_and_grad(loss_fn)(params, graphdef, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

Optimizers are built from optax pieces in the order torch applies them (see
:func:`make_optimizer`), and their state converts to torch's words (``momentum_buffer``,
``exp_avg``, ``exp_avg_sq``) for checkpoints either backend can resume.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnet.config import OptimConfig
from jaxnet.model import from_torch_layout, to_torch_layout


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``nn.CrossEntropyLoss()``: mean over the batch of ``logsumexp(z) - z[label]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, x: jax.Array, y: jax.Array) -> jax.Array:
    """The loss as a pure function of ``params`` (the thing ``jax.grad`` differentiates)."""
    model = nnx.merge(graphdef, params)
    return cross_entropy(model(x), y)


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
    every ``step_every`` steps. The same double operations in the same order, so the same bits.
    """
    if cfg.total_steps < 1:
        raise ValueError(f"schedule {cfg.schedule!r} needs total_steps >= 1")
    lrs, total = [cfg.lr], cfg.total_steps
    for t in range(1, total + 1):
        if cfg.schedule == "cosine":
            factor = (1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total))
            lrs.append(factor * (lrs[-1] - 0.0) + 0.0)
        else:
            lrs.append(lrs[-1] * cfg.gamma if t % cfg.step_every == 0 else lrs[-1])
    return np.array(lrs)


def make_optimizer(cfg: OptimConfig, dtype: str = "float32") -> optax.GradientTransformation:
    """optax chains with torch.optim's semantics.

    - sgd: ``g += wd * p`` (coupled decay, before momentum), ``buf = m * buf + g`` (the
      first buffer is ``g`` itself, as ``optax.trace`` starts from zeros), nesterov
      ``g + m * buf``; ``p -= lr * g``.
    - adam: coupled L2 decay ``g += wd * p``, then :func:`scale_by_adam` (eps outside the sqrt).
    - adamw: :func:`scale_by_adam` then decoupled ``+ wd * p``, both scaled by ``lr``, as in torch.

    Example:
        >>> tx = make_optimizer(OptimConfig(name="sgd", lr=0.1, momentum=0.9))
    """
    b1, b2 = cfg.betas
    parts: list[optax.GradientTransformation] = []
    if cfg.name in ("sgd", "adam") and cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    if cfg.name == "sgd" and cfg.momentum:
        parts.append(optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov))
    if cfg.name in ("adam", "adamw"):
        parts.append(scale_by_adam(b1=b1, b2=b2, eps=cfg.eps))
    if cfg.name == "adamw" and cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
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


def export_opt_state(opt_state: tuple, step: int) -> dict[str, np.ndarray]:
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
        for state_name, tree in named.items():
            out |= {f"{k}.{state_name}": v for k, v in to_torch_layout(tree).items()}
    return out


def import_opt_state(opt_state: tuple, state: dict[str, np.ndarray], step: int) -> tuple:
    """Inverse of :func:`export_opt_state`: fill a fresh ``tx.init`` state, set counts to ``step``."""

    def pick(tree, state_name: str):
        sub = {k.removesuffix("." + state_name): v for k, v in state.items() if k.endswith("." + state_name)}
        return from_torch_layout(tree, sub) if sub else tree

    def count():  # a fresh buffer per counter: donation rejects one buffer passed twice
        return jnp.asarray(step, dtype=jnp.int32)

    parts = []
    for part in opt_state:
        if isinstance(part, optax.TraceState):
            part = part._replace(trace=pick(part.trace, "momentum_buffer"))
        elif isinstance(part, optax.ScaleByAdamState):
            part = part._replace(count=count(), mu=pick(part.mu, "exp_avg"), nu=pick(part.nu, "exp_avg_sq"))
        elif isinstance(part, optax.ScaleByScheduleState):
            part = part._replace(count=count())
        parts.append(part)
    return tuple(parts)


# ---------------------------------------------------------------------------- steps and epochs


def train_step(graphdef, tx, params, opt_state, x, y):
    """One SGD/Adam step: ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    loss, grads = loss_and_grads(params, graphdef, x, y)
    params, opt_state = apply_gradients(tx, params, opt_state, grads)
    return params, opt_state, loss


def train_steps(graphdef, tx, params, opt_state, images, labels, batch_idx, shard=None):
    """``len(batch_idx)`` steps as one ``lax.scan``; ``batch_idx`` is int ``[steps, batch]``.

    ``images`` and ``labels`` stay on the device; each step gathers its batch by index.
    ``shard``, if given, places each gathered batch (``jax.lax.with_sharding_constraint`` over
    a device mesh): XLA then splits the step across the devices and sums the gradient over
    them, the same mean over the whole batch. Returns ``(params, opt_state, losses[steps])``.
    """
    shard = shard or (lambda x: x)

    def body(carry, idx):
        params, opt_state = carry
        x, y = shard(images[idx]), shard(labels[idx])
        params, opt_state, loss = train_step(graphdef, tx, params, opt_state, x, y)
        return (params, opt_state), loss

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batch_idx)
    return params, opt_state, losses


def evaluate(graphdef, params, images, labels, batch_size: int = 64):
    """``(correct, avg_loss)`` in one forward pass over the whole split.

    ``avg_loss`` is the tutorial's: the mean over batches of each batch's mean loss.
    """
    logits = nnx.merge(graphdef, params)(images)
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
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


def compiled(graphdef, tx, shard=None):
    """jitted ``train_step``, ``train_steps`` and ``apply_gradients`` for one model and optimizer.

    ``params`` and ``opt_state`` are donated: XLA updates them in place instead of copying.
    ``shard``: see :func:`train_steps`.
    """
    return (
        jax.jit(functools.partial(train_step, graphdef, tx), donate_argnums=(0, 1)),
        jax.jit(functools.partial(train_steps, graphdef, tx, shard=shard), donate_argnums=(0, 1)),
        jax.jit(functools.partial(apply_gradients, tx), donate_argnums=(0, 1)),
    )
