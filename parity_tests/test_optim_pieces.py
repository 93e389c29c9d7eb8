"""The optimizer pieces a port needs, against torch through both backends: gradient clipping by
global norm, linear warm-up then cosine, weight decay masked off chosen parameters.

Each comparison feeds the same real gradients (the tutorial MLP, hidden layer of 8, on real
Fashion-MNIST batches) to ``apply_gradients`` of both backends and holds the parameters within
a bound derived from the unit roundoff ``u`` (:func:`bound`); a wrong piece (clipping after the
decay, no mask, optax's own clip, a schedule off by a step) lands orders of magnitude outside it.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import torchref
from jaxnet import checkpoint, data
from jaxnet import train as jtrain
from jaxnet.backends import get_backend
from jaxnet.config import ALL_RECIPES, PORT_RECIPES, ModelConfig, OptimConfig, TrainConfig
from jaxnet.errors import JaxnetError
from jaxnet.numerics import UNIT_ROUNDOFF

CONFIG = ModelConfig(hidden=(8,))  # 6,370 parameters: every piece, little arithmetic
STEPS = 4
# Roundings per element per step on one side, at most: Adam's moments (3 + 4), bias
# corrections (2), sqrt, + eps, the quotient, the decay (2), the lr product and the
# subtraction: 16; both sides round independently: 32.
ROUNDINGS = 32
# The port recipes on a 4-step run: both phases of the warm-up schedule, and lrs that move the
# tiny MLP's weights by tens of percent (so that every difference shows); a clip norm of a
# quarter of the gradients' (about 0.9), so that the clip clips.
RESNET = replace(PORT_RECIPES["sgd-nesterov-masked-cosine"], total_steps=STEPS, clip_norm=0.25)
GPT = replace(
    PORT_RECIPES["adamw-warmup-cosine-clip"], lr=1e-2, total_steps=STEPS, warmup_steps=2, clip_norm=0.25
)


_GRADIENTS: dict[str, list[dict[str, np.ndarray]]] = {}


def gradients(fmnist, dtype: str) -> list[dict[str, np.ndarray]]:
    """torch's gradients on STEPS real batches of 32, at the initial weights (once per dtype)."""
    if dtype not in _GRADIENTS:
        state = checkpoint.init_state_dict(CONFIG, 1, dtype)
        torch_side = get_backend("torch", CONFIG, dtype=dtype, state=state)
        images = data.to_float(fmnist.train.images[: 32 * STEPS], dtype)[:, None]  # not all 60,000
        labels = fmnist.train.labels
        _GRADIENTS[dtype] = [
            torch_side.loss_and_grads(images[32 * k : 32 * k + 32], labels[32 * k : 32 * k + 32])[1]
            for k in range(STEPS)
        ]
    return _GRADIENTS[dtype]


def trajectory(name: str, opt: OptimConfig, grads: list, dtype: str) -> list[dict[str, np.ndarray]]:
    """The parameters before and after each ``apply_gradients`` of ``grads``."""
    backend = get_backend(name, CONFIG, dtype=dtype, state=checkpoint.init_state_dict(CONFIG, 1, dtype))
    backend.set_optimizer(opt)
    states = [backend.state_dict()]
    for g in grads:
        backend.apply_gradients(g)
        states.append(backend.state_dict())
    return states


def global_norm(grads: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values())))


def bound(reference: list[dict[str, np.ndarray]], key: str, dtype: str, opt: OptimConfig) -> float:
    """``max |jax - torch|`` allowed for parameter ``key`` after the reference's steps.

    Per step, each element's ROUNDINGS roundings move it by at most ``ROUNDINGS u |p|`` (the
    update and the parameter both bounded by ``max |p_k|`` and ``max |p_k+1 - p_k|``); the clip
    coefficient, a square root of a sum of ``n`` squares summed in another order on each side,
    is off by at most ``n u`` relative (the classical bound for any order), which scales the
    whole update; momentum carries an update's error into every later one (at most
    ``1 / (1 - m)`` times). Errors of earlier steps feed back only through ``wd * lr * p``
    (below 1e-3 of themselves) and are covered by the sum over steps.
    """
    u, n = UNIT_ROUNDOFF[dtype], sum(v.size for v in reference[0].values()) if opt.clip_norm else 0
    carry = 1 / (1 - opt.momentum)
    total = 0.0
    for before, after in itertools.pairwise(reference):
        moved = float(np.abs(after[key] - before[key]).max())
        total += ROUNDINGS * u * float(np.abs(after[key]).max()) + carry * (n + ROUNDINGS) * u * moved
    return total


def worst_ratio(jax_states, torch_states, dtype, opt) -> dict[str, float]:
    """``max |jax - torch| / bound`` per parameter after the last step."""
    j, t = jax_states[-1], torch_states[-1]
    return {k: float(np.abs(j[k] - t[k]).max()) / bound(torch_states, k, dtype, opt) for k in t}


@pytest.mark.parametrize(
    ("recipe", "dtype"),
    [(RESNET, "float64"), (GPT, "float64"), (GPT, "float32")],
    ids=[
        "sgd-nesterov-masked-cosine-clip-f64",
        "adamw-warmup-cosine-clip-f64",
        "adamw-warmup-cosine-clip-f32",
    ],
)
def test_port_recipes_match_torch_within_roundoff(fmnist, recipe, dtype):
    """Clipping (before the coupled decay, momentum and Adam), the masked decay and the
    schedules, 4 steps, jax against torch within :func:`bound` (measured: at most 3.4 u of
    ``max |p|`` normwise, in both dtypes; at most 0.01 of the bound, which the worst case of
    the clip norm's summation order dominates), also when jax resumes halfway from torch's state.
    The gradients' norm (about 0.9) is above the clip norm at every step, so the clip clips;
    torch without it lands far outside the bound."""
    grads = gradients(fmnist, dtype)
    assert min(global_norm(g) for g in grads) > 2 * recipe.clip_norm  # the clip is active
    torch_states = trajectory("torch", recipe, grads, dtype)
    jax_states = trajectory("jax", recipe, grads, dtype)
    ratios = worst_ratio(jax_states, torch_states, dtype, recipe)
    assert max(ratios.values()) <= 1, ratios
    # resumed halfway in jax from torch's weights and optimizer state: the schedule's position
    # (past the warm-up), Adam's count and the buffers carry over, onto the same trajectory
    half = STEPS // 2
    torch_side = get_backend("torch", CONFIG, dtype=dtype, state=torch_states[0])
    torch_side.set_optimizer(recipe)
    for g in grads[:half]:
        torch_side.apply_gradients(g)
    resumed = get_backend("jax", CONFIG, dtype=dtype, state=torch_side.state_dict())
    resumed.set_optimizer(recipe, torch_side.optimizer_state(), half)
    for g in grads[half:]:
        resumed.apply_gradients(g)
    ratios = worst_ratio([resumed.state_dict()], torch_states, dtype, recipe)
    assert max(ratios.values()) <= 1, ratios
    # not vacuous; Adam is blind to a gradient's scale, so in float32 the clip shows only through
    # the coefficient's change from step to step (measured: 90 to 160 times the bound)
    unclipped = trajectory("torch", replace(recipe, clip_norm=0.0), grads, dtype)
    assert min(worst_ratio(unclipped, torch_states, dtype, recipe).values()) > 10


def test_the_decay_mask_masks_exactly_the_named_parameters(fmnist):
    """``no_decay=("*.bias",)``: torch's second parameter group and jaxnet's optax mask take
    the decay off the biases alone. Unmasked torch moves the biases far outside the bound of
    the masked pair, and leaves the weights bit for bit as the masked run does."""
    grads, dtype = gradients(fmnist, "float64"), "float64"
    masked = trajectory("torch", RESNET, grads, dtype)
    unmasked = trajectory("torch", replace(RESNET, no_decay=()), grads, dtype)
    weights = [k for k in masked[-1] if k.endswith(".weight")]
    biases = [k for k in masked[-1] if k.endswith(".bias")]
    assert all(np.array_equal(masked[-1][k], unmasked[-1][k]) for k in weights)
    off = worst_ratio(unmasked, masked, dtype, RESNET)
    assert min(off[k] for k in biases) > 100, off
    jax_side = get_backend("jax", CONFIG, dtype=dtype, state=checkpoint.init_state_dict(CONFIG, 1, dtype))
    mask = jtrain.decay_mask(RESNET)(jax_side.params)
    names = {jax_side.layout.torch_name(p): m for p, m in _leaves_with_path(mask)}
    assert names == {k: k.endswith(".weight") for k in masked[-1]}


def _leaves_with_path(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_clip_coefficient_is_torchs_not_optaxs(fmnist):
    """jaxnet's clip against ``torch.nn.utils.clip_grad_norm_`` on the same float64 gradients:
    within ``(n + 4) u`` relative (the norm's summation order; measured 6 u), where optax's
    ``clip_by_global_norm`` (no 1e-6 in the denominator) is 1e-6 relative off."""
    import jax
    import jax.numpy as jnp
    import optax

    grads = gradients(fmnist, "float64")[0]
    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads.values()]
    for p, g in zip(params, grads.values(), strict=True):
        p.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(params, 0.25)
    expected = {k: p.grad.numpy() for k, p in zip(grads, params, strict=True)}
    n = sum(g.size for g in grads.values())
    with jax.enable_x64(True):
        tree = {k: jnp.asarray(g) for k, g in grads.items()}
        ours = jax.jit(jtrain.clip_by_global_norm(0.25).update)(tree, optax.EmptyState())[0]
        theirs = jax.jit(optax.clip_by_global_norm(0.25).update)(tree, optax.EmptyState())[0]
    rel = {
        k: float(np.abs(np.asarray(ours[k]) - expected[k]).max() / np.abs(expected[k]).max()) for k in grads
    }
    assert max(rel.values()) <= (n + 4) * UNIT_ROUNDOFF["float64"], rel
    optax_rel = max(
        float(np.abs(np.asarray(theirs[k]) - expected[k]).max() / np.abs(expected[k]).max()) for k in grads
    )
    assert optax_rel > 100 * (n + 4) * UNIT_ROUNDOFF["float64"]


@pytest.mark.parametrize(("warmup", "total"), [(0, 7), (3, 10), (10, 10), (12, 10)])
def test_warmup_cosine_table_is_torchs_lambda_lr_bit_for_bit(warmup, total):
    """``torch_lr_table`` (what the JAX schedule indexes) equals ``LambdaLR``'s ``get_last_lr()``
    before every step, and a scheduler fast-forwarded to step ``k`` (a resumed run) gives
    entry ``k``: exact float64 equality, the same double operations in the same order."""
    cfg = OptimConfig(name="adamw", lr=6e-4, schedule="warmup-cosine", warmup_steps=warmup, total_steps=total)
    table = jtrain.torch_lr_table(cfg)
    model = torchref.NeuralNetwork(4, (3,), 2)
    opt = torchref.make_optimizer(model, "adamw", cfg.lr)
    sched = torchref.make_scheduler(opt, cfg.schedule, total, warmup_steps=warmup)
    seen = [sched.get_last_lr()[0]]
    for _ in range(total):
        opt.step()  # no gradients: nothing moves, but the scheduler sees the step
        sched.step()
        seen.append(sched.get_last_lr()[0])
    assert np.array_equal(np.array(seen), table), (seen, table)
    for k in (0, min(warmup, total), total):
        resumed = torchref.make_scheduler(
            torchref.make_optimizer(model, "adamw", cfg.lr), cfg.schedule, total, step=k, warmup_steps=warmup
        )
        assert resumed.get_last_lr()[0] == table[k]
    assert table[0] == (0.0 if warmup else cfg.lr)  # LambdaLR sets lr * factor(0) at once
    assert (table[-1] == 0.0) == (warmup < total)  # down to 0 at the end, unless still warming up


def test_optim_config_round_trips_and_old_recipes_write_what_they_did():
    """The new fields survive a checkpoint's JSON; at their defaults they are left out, so an
    older recipe's ``state.json`` has exactly the keys it had, and reads back equal."""
    train = TrainConfig(optimizer=replace(GPT, total_steps=100))
    assert TrainConfig.from_json(train.to_json()) == train
    before = {"name", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "schedule",
              "total_steps", "gamma", "step_size", "rho"}  # fmt: skip
    for recipe in ALL_RECIPES.values():
        old = TrainConfig(optimizer=recipe)
        assert set(json.loads(old.to_json())["optimizer"]) == before
        assert TrainConfig.from_json(old.to_json()) == old
    assert len({GPT, replace(GPT, no_decay=list(GPT.no_decay))}) == 1  # tuples: a compiled-step cache key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clip_norm": -1.0}, "clip norm must be finite and >= 0"),
        ({"clip_norm": float("nan")}, "clip norm must be finite and >= 0"),
        ({"warmup_steps": 3}, "warm-up steps need the warmup-cosine schedule"),
        ({"schedule": "warmup-cosine", "warmup_steps": -1}, "warm-up steps must be >= 0"),
        ({"no_decay": "*.bias"}, "no_decay must be a sequence of name patterns"),
    ],
)
def test_bad_optimizer_pieces_are_one_line_errors(fields, message):
    with pytest.raises(JaxnetError, match=message) as err:
        OptimConfig(**fields)
    assert "\n" not in str(err.value)


def test_train_flags_reach_the_checkpoint(tmp_path, capsys):
    """``jaxnet train --clip-norm --warmup-steps --no-decay`` (torch: nothing to compile) saves
    the recipe it ran; a pattern that matches no parameter of the model, and warm-up without
    its schedule, are one-line usage errors."""
    from jaxnet.cli import main

    ckpt = tmp_path / "c"
    recipe = [
        "--optimizer",
        "adamw",
        "--schedule",
        "warmup-cosine",
        "--warmup-steps",
        "2",
        "--clip-norm",
        "0.5",
    ]
    args = ["train", "--backend", "torch", "--hidden", "8", "--epochs", "1", "--train-limit", "320", *recipe]
    assert main([*args, "--no-decay", "*.bias", "--save", str(ckpt)]) == 0
    saved = checkpoint.load(ckpt).train_config.optimizer
    assert (saved.clip_norm, saved.warmup_steps, saved.no_decay) == (0.5, 2, ("*.bias",))
    capsys.readouterr()
    for extra, message in (
        (["--no-decay", "*.bias", "*.bais"], "--no-decay '*.bais' matches no parameter of the mlp"),
        (["--schedule", "cosine"], "warm-up steps need the warmup-cosine schedule"),
    ):
        with pytest.raises(SystemExit) as stop:
            main([*args, *extra])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "Traceback" not in err
        assert message in err.strip().splitlines()[-1]
