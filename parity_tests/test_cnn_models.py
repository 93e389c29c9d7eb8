"""The examples/mnist CNN pair and Adadelta, compared directly (no backend, no harness).

``torchref.cnn.Net`` and ``jaxnet.cnn.Net`` get the same numpy-drawn float64 weights (torch
layout, converted with ``jaxnet.model.from_torch_layout``), the same real Fashion-MNIST test
images and the same dropout masks; ``torch.optim.Adadelta`` and ``jaxnet.train``'s Adadelta
chain get the same weights and gradients. Every comparison is the normwise relative error
``max|a - b| / max|b|`` (``jaxnet.numerics.rel_error``).

float64 bounds, and why they are what they are: the unit roundoff is u = 1.1e-16. The two
frameworks sum the conv and matmul reductions (9 to 9216 terms) in different orders and
blockings, which moves each output by a few u times sqrt(terms) in practice (at worst
terms * u, 1e-12 for fc1); measured figures are written beside each bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jaxnet import cnn
from jaxnet import train as jtrain
from jaxnet.config import CNNConfig, OptimConfig
from jaxnet.model import from_torch_layout, to_torch_layout
from jaxnet.numerics import rel_error
from torchref import cnn as tcnn
from torchref import train as ttrain

N = 8  # real test images per comparison: enough for every class of path, cheap on 2 cores
SMALL = {"channels": (4, 8), "hidden": 16}  # the optimizer tests: the CNN's keys, fewer numbers


def torch_state(channels=(32, 64), hidden=128, num_classes=10, *, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 weights in torch's layout, each ``U(+-1/sqrt(fan_in))`` like torch's own init."""
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in tcnn.Net(channels, hidden, num_classes).state_dict().items()}
    state = {}
    for key, shape in shapes.items():
        weight = shapes[key.rsplit(".", 1)[0] + ".weight"]
        bound = 1 / np.sqrt(np.prod(weight[1:]))  # fan_in: in_channels * 3 * 3, or in_features
        state[key] = rng.uniform(-bound, bound, shape)
    return state


def torch_net(state: dict[str, np.ndarray], channels=(32, 64), hidden=128) -> tcnn.Net:
    model = tcnn.Net(channels, hidden, dtype=torch.float64)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def jax_net(state: dict[str, np.ndarray], channels=(32, 64), hidden=128) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, params)`` holding ``state``; call inside ``jax.enable_x64(True)``."""
    abstract = nnx.eval_shape(lambda: cnn.Net(channels, hidden, dtype=jnp.float64, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    return graphdef, from_torch_layout(params, state)


@pytest.fixture(scope="module")
def pair(fmnist):
    """Both nets with one set of float64 weights, 8 real test images, labels, dropout masks."""
    state = torch_state()
    x = fmnist.test[:N].float_images("float64")
    y = np.asarray(fmnist.test.labels[:N], np.int64)
    rng = np.random.default_rng(1)
    masks = (
        (rng.random((N, 64, 12, 12)) >= 0.25).astype(np.float64),  # keep with 1 - p, as nn.Dropout draws
        (rng.random((N, 128)) >= 0.5).astype(np.float64),
    )
    with jax.enable_x64(True):
        graphdef, params = jax_net(state)
    return {
        "state": state,
        "x": x,
        "y": y,
        "masks": masks,
        "torch": torch_net(state),
        "jax": (graphdef, params),
    }


def torch_acts(pair, masks) -> dict[str, np.ndarray]:
    model = pair["torch"].eval()
    with torch.no_grad():
        tm = None if masks is None else tuple(torch.from_numpy(m) for m in masks)
        acts = tcnn.activations(model, torch.from_numpy(pair["x"]), tm)
    return {k: v.numpy() for k, v in acts.items()}


def jax_acts(pair, masks) -> dict[str, np.ndarray]:
    graphdef, params = pair["jax"]
    with jax.enable_x64(True):
        jm = None if masks is None else tuple(jnp.asarray(m) for m in masks)
        acts = jax.jit(lambda p, x, m: cnn.activations(nnx.merge(graphdef, p), x, m))(params, pair["x"], jm)
        return {k: np.asarray(v) for k, v in acts.items()}


KEYS = [
    "conv1", "relu1", "conv2", "relu2", "pool", "dropout1",
    "flatten", "fc1", "relu3", "dropout2", "fc2", "log_softmax",
]  # fmt: skip


# ---------------------------------------------------------------------------- layout and init


@pytest.fixture(scope="module")
def built() -> cnn.Net:
    """``build`` with the example's sizes (float32, seed 3)."""
    return cnn.build(CNNConfig(), seed=3)


def test_nnx_params_map_onto_torchs_keys_and_shapes(built):
    """``to_torch_layout`` of the NNX params is torch's state dict, key for key and shape for
    shape; ``nnx.split(model, nnx.Param)`` is the whole model (dropout keeps no RNG state)."""
    model = built
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    assert jax.tree.leaves(rest) == []
    ours = {k: v.shape for k, v in to_torch_layout(params).items()}
    theirs = {k: tuple(v.shape) for k, v in tcnn.Net().state_dict().items()}
    assert ours == theirs
    assert ours == CNNConfig().param_shapes()
    assert jax.tree.leaves(nnx.state(nnx.merge(graphdef, params), nnx.Not(nnx.Param))) == []


def test_init_is_torchs_uniform(built):
    """Every weight and bias in ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, fan_in of a conv
    ``in_channels * 9``; Flax's defaults (lecun-normal kernels, zero biases) would fail both."""
    state = to_torch_layout(nnx.split(built, nnx.Param)[1])
    fan_in = {"conv1": 9, "conv2": 32 * 9, "fc1": 64 * 12 * 12, "fc2": 128}
    for key, value in state.items():
        bound = 1 / np.sqrt(fan_in[key.split(".")[0]])
        assert np.abs(value).max() <= bound, key  # lecun-normal (truncated at 2 sd = 2 bound) would not
        assert np.all(value != 0), key
        if value.size >= 288:  # the weights: a uniform's max and spread (1/sqrt(3) bound), from 288+ draws
            assert np.abs(value).max() > 0.95 * bound, key  # P(fail) = 0.95^288 = 4e-7
            assert abs(value.std() / bound - 3**-0.5) < 0.05, key  # sd of the estimate: 0.02 at 288 draws


# ---------------------------------------------------------------------------- forward and gradients


@pytest.mark.parametrize("with_masks", [False, True], ids=["eval", "masks"])
def test_activations_agree_float64(pair, with_masks):
    """Every intermediate, eval mode and with the same dropout masks. Bound 1e-13: conv and
    matmul reductions summed in another order (measured at most 6e-15, fc1's 9216-term sums
    against outputs smaller than their terms)."""
    masks = pair["masks"] if with_masks else None
    t, j = torch_acts(pair, masks), jax_acts(pair, masks)
    assert list(t) == KEYS and set(j) == set(KEYS)  # jit returns a dict sorted by key
    for key in KEYS:
        assert j[key].shape == t[key].shape, key
        assert rel_error(j[key], t[key]) < 1e-13, (key, rel_error(j[key], t[key]))
    if with_masks:  # the masks were applied: dropout changed what follows it
        assert rel_error(t["dropout1"], t["pool"]) > 0.1 and rel_error(t["dropout2"], t["relu3"]) > 0.1


@pytest.mark.parametrize("with_masks", [False, True], ids=["eval", "masks"])
def test_loss_and_gradients_agree_float64(pair, with_masks):
    """``F.nll_loss`` and its gradient for every parameter. Bound 1e-13: the backward pass
    repeats the forward's reductions transposed, conv2's weight gradient summing 8 * 24 * 24
    products per entry (measured: loss 2e-16, gradients at most 4e-15)."""
    x, y, masks = pair["x"], pair["y"], pair["masks"] if with_masks else None
    model = pair["torch"].eval()
    model.zero_grad(set_to_none=True)
    tm = None if masks is None else tuple(torch.from_numpy(m) for m in masks)
    t_loss = tcnn.loss_fn(model(torch.from_numpy(x), tm), torch.from_numpy(y))
    t_loss.backward()
    t_grads = {k: p.grad.numpy().copy() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    graphdef, params = pair["jax"]
    with jax.enable_x64(True):
        jm = None if masks is None else tuple(jnp.asarray(m) for m in masks)
        j_loss, j_grads = jax.jit(jax.value_and_grad(cnn.loss_fn), static_argnums=1)(
            params, graphdef, jnp.asarray(x), jnp.asarray(y), jm
        )
        j_grads = to_torch_layout(j_grads)
    assert abs(float(j_loss) - t_loss.item()) < 1e-13 * abs(t_loss.item())  # one mean of 8 terms
    assert set(j_grads) == set(t_grads)
    for key, g in t_grads.items():
        assert j_grads[key].shape == g.shape, key
        assert np.abs(g).max() > 0, key  # every gradient non-trivial, so the comparison means something
        assert rel_error(j_grads[key], g) < 1e-13, (key, rel_error(j_grads[key], g))


def test_mask_path_is_torchs_own_dropout():
    """A mask recovered from ``nn.Dropout``'s own draw reproduces its output bit for bit, in
    torch and in jax: ``x * (m / (1 - p))``, as torch scales its noise. (In torch,
    ``(x * m) / (1 - p)`` rounds a quarter of these differently; XLA turns any division by a
    constant into a product with its reciprocal, so jax's bits do not depend on the grouping.)"""
    torch.manual_seed(0)
    x = torch.rand(4096, dtype=torch.float64) + 0.5
    layer = torch.nn.Dropout(0.25).train()
    out = layer(x)
    mask = (out != 0).double()
    assert torch.equal(tcnn._dropout(layer, x, mask), out)
    with jax.enable_x64(True):
        assert np.array_equal(
            np.asarray(cnn._dropout(jnp.asarray(x.numpy()), jnp.asarray(mask.numpy()), 0.25)), out.numpy()
        )


def test_jax_key_draws_masks_of_the_configured_rates(built):
    """``key=``: train mode, masks drawn with the constructor's rates, the same for the same key."""
    model = built  # rates 0.25 and 0.5
    x = jnp.asarray(np.random.default_rng(0).random((16, 1, 28, 28)), jnp.float32)

    @nnx.jit  # one compilation for the draw and the three forward passes
    def run(model, x, key):
        masks = cnn.dropout_masks(model, key, 16)
        return masks, model(x, key=key), model(x, masks=masks), model(x)

    (m1, m2), drawn, given, evaluated = run(model, x, jax.random.key(7))
    assert m1.shape == (16, 64, 12, 12) and m2.shape == (16, 128)
    # 147k and 2k draws: standard errors 0.0011 and 0.011, so 9 and 4.5 of them (swapped rates fail)
    assert abs(float(m1.mean()) - 0.75) < 0.01 and abs(float(m2.mean()) - 0.5) < 0.05
    assert np.array_equal(drawn, given)
    assert not np.allclose(drawn, evaluated)  # eval (no key, no masks) keeps every unit


# ---------------------------------------------------------------------------- Adadelta


def adadelta(wd: float, schedule: str = "constant") -> OptimConfig:
    # StepLR: total_steps 6 -> gamma every 2 steps in both (torchref: total_steps // 3)
    return OptimConfig(
        name="adadelta", lr=1.0, rho=0.9, eps=1e-6, weight_decay=wd, schedule=schedule, total_steps=6, gamma=0.7
    )  # fmt: skip


def gradients(shapes: dict[str, tuple], steps: int, seed: int = 2) -> list[dict[str, np.ndarray]]:
    """Gradients of mixed scales per step and tensor (1e-4 to 1: near eps and far above)."""
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(s) * 10.0 ** rng.integers(-4, 1) for k, s in shapes.items()}
        for _ in range(steps)
    ]


class TorchAdadelta:
    def __init__(self, cfg: OptimConfig, state: dict[str, np.ndarray]) -> None:
        self.model = torch_net(state, **SMALL)
        self.opt = ttrain.make_optimizer(
            self.model, "adadelta", cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps, rho=cfg.rho
        )
        self.sched = ttrain.make_scheduler(self.opt, cfg.schedule, cfg.total_steps, cfg.gamma)

    def step(self, grads: dict[str, np.ndarray]) -> None:
        for name, p in self.model.named_parameters():
            p.grad = torch.from_numpy(grads[name].copy())
        self.opt.step()
        self.opt.zero_grad()
        if self.sched is not None:
            self.sched.step()

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy().copy() for k, v in self.model.state_dict().items()}


class JaxAdadelta:
    """jaxnet's chain on the CNN's params; every method runs under ``jax.enable_x64``."""

    def __init__(self, cfg: OptimConfig, state: dict[str, np.ndarray]) -> None:
        with jax.enable_x64(True):
            _, self.p = jax_net(state, **SMALL)
            self.tx = jtrain.make_optimizer(cfg, "float64")
            self.s = self.tx.init(self.p)
            self.apply = jax.jit(lambda p, s, g: jtrain.apply_gradients(self.tx, p, s, g))

    def step(self, grads: dict[str, np.ndarray]) -> None:
        with jax.enable_x64(True):
            self.p, self.s = self.apply(self.p, self.s, from_torch_layout(self.p, grads))

    def params(self) -> dict[str, np.ndarray]:
        return to_torch_layout(self.p)


def worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    return max(rel_error(a[k], b[k]) for k in b)


@pytest.mark.parametrize(
    ("wd", "schedule"),
    [(0.0, "constant"), (1e-4, "constant"), (1e-4, "step")],
    ids=["wd0", "wd1e-4", "steplr"],
)
def test_adadelta_matches_torch_float64(wd, schedule):
    """5 steps from the same weights and gradients: parameters within 1e-15, both buffers
    within 2e-15. What differs is rounding alone: torch's float64 sqrt on CPU (MKL's vector
    sqrt) is off by an ulp in ~1.4% of elements where jaxnet's is correctly rounded, so
    ``delta`` (a ratio of two roots) can differ by ~2 ulps, ``acc_delta`` (its square) by ~4.
    Measured: parameters at most 2.5e-16, ``acc_delta`` 7.3e-16, ``square_avg`` 0 without
    weight decay (its products are torch's)."""
    cfg, state = adadelta(wd, schedule), torch_state(**SMALL)
    t, j = TorchAdadelta(cfg, state), JaxAdadelta(cfg, state)
    for grads in gradients({k: v.shape for k, v in state.items()}, 5):
        t.step(grads), j.step(grads)
        assert worst(j.params(), t.params()) < 1e-15  # steps of ~lr * ratio of roots: a few ulps of p
    t_state = ttrain.optimizer_state(t.model, t.opt)
    j_state = jtrain.export_opt_state(j.s, 5)
    assert set(t_state) == {f"{k}.{n}" for k in state for n in ("square_avg", "acc_delta")}
    assert worst(j_state, t_state) < 2e-15  # acc_delta: delta squared, twice delta's ulps
    assert worst(j.params(), state) > 1e-3  # the steps moved the weights: the comparison is not vacuous


def test_adadelta_state_round_trips():
    """torch: ``optimizer_state`` -> ``load_optimizer_state`` into a fresh optimizer restores the
    buffers and ``step``; jaxnet: ``export_opt_state`` -> ``import_opt_state`` into a fresh
    ``tx.init`` gives back the same arrays (bit for bit: nothing is computed)."""
    cfg, state = adadelta(1e-4, "step"), torch_state(**SMALL)
    grads = gradients({k: v.shape for k, v in state.items()}, 3)
    t, j = TorchAdadelta(cfg, state), JaxAdadelta(cfg, state)
    for g in grads:
        t.step(g), j.step(g)
    saved = ttrain.optimizer_state(t.model, t.opt)
    fresh = TorchAdadelta(cfg, state)
    ttrain.load_optimizer_state(fresh.model, fresh.opt, saved, 3)
    reloaded = ttrain.optimizer_state(fresh.model, fresh.opt)
    assert set(reloaded) == set(saved) and all(np.array_equal(reloaded[k], saved[k]) for k in saved)
    assert {float(s["step"]) for s in fresh.opt.state.values()} == {3.0}
    exported = jtrain.export_opt_state(j.s, 3)
    assert set(exported) == set(saved)
    with jax.enable_x64(True):
        imported = jtrain.import_opt_state(j.tx.init(j.p), exported, 3)
        again = jtrain.export_opt_state(imported, 3)
        counts = [int(part.count) for part in imported if isinstance(part, optax.ScaleByScheduleState)]
    assert set(again) == set(exported) and all(np.array_equal(again[k], exported[k]) for k in exported)
    assert counts == [3]  # the schedule resumes at step 3 (StepLR's lr * 0.7 after step 2)


@pytest.mark.parametrize("swap", [False, True], ids=["as-named", "buffers-swapped"])
def test_torch_state_resumes_in_jax(swap):
    """3 torch steps, state exported, imported into a fresh jaxnet chain beside the torch
    weights; 3 more steps in each stay within 2e-15, the bound (and reason) of
    :func:`test_adadelta_matches_torch_float64` (measured: parameters 1.9e-16, buffers 6.3e-16).
    The same import with ``square_avg`` and ``acc_delta`` exchanged must land far outside it."""
    cfg, state = adadelta(1e-4, "step"), torch_state(**SMALL)
    grads = gradients({k: v.shape for k, v in state.items()}, 6)
    t = TorchAdadelta(cfg, state)
    for g in grads[:3]:
        t.step(g)
    saved = ttrain.optimizer_state(t.model, t.opt)
    if swap:
        other = {"square_avg": "acc_delta", "acc_delta": "square_avg"}
        saved = {f"{k.rsplit('.', 1)[0]}.{other[k.rsplit('.', 1)[1]]}": v for k, v in saved.items()}
    j = JaxAdadelta(cfg, t.params())
    with jax.enable_x64(True):
        j.s = jtrain.import_opt_state(j.s, saved, 3)
    for g in grads[3:]:
        t.step(g), j.step(g)
    err = max(
        worst(j.params(), t.params()),
        worst(jtrain.export_opt_state(j.s, 6), ttrain.optimizer_state(t.model, t.opt)),
    )
    assert (err > 1e-6) if swap else (err < 2e-15), err
