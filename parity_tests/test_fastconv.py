"""``jaxnet.fastconv``: an ``nnx.Conv`` computing as im2col + GEMM, with its own gradient,
agrees with the same ``nnx.Conv`` on XLA's convolution within float32 rounding.

The bound is derived, not measured: each output (and each gradient entry) is a sum of K
products, which the two implementations add in different orders. Each order's result lies
within ``(K - 1) u sum |terms|`` of the exact sum (u = 2^-24), so the two differ by at most
``2 (K - 1) u sum |terms|``, element by element; ``sum |terms|`` is the same computation on
absolute values (its own rounding is a relative ``K u``, covered by a factor 1.01).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnet import fastconv
from jaxnet.data import to_float
from parity_tests.floors import assert_within_float32_floor
from parity_tests.nnx_ports import blank

U = 2.0**-24


def _conv(c_in: int, c_out: int, padding, strides=1, fast=False) -> nnx.Conv:
    conv = nnx.Conv(c_in, c_out, (3, 3), strides=strides, padding=padding, rngs=nnx.Rngs(0))
    return fastconv.enable(conv) if fast else conv


def _value_and_grads(conv: nnx.Conv, x, g):
    graphdef, params = nnx.split(conv, nnx.Param)
    out, dx, dparams = _compiled(graphdef, params, x, g)  # one program (eager ops compile one by one)
    return out, dx, nnx.to_pure_dict(dparams)["kernel"]


@functools.partial(jax.jit, static_argnums=0)
def _compiled(graphdef, params, x, g):
    out, back = jax.vjp(lambda x, params: nnx.merge(graphdef, params)(x), x, params)
    return (out, *back(g))


def _abs_terms(conv: nnx.Conv, x, g):
    """``sum |terms|`` of every output and gradient entry: the same sums on absolute values."""
    absolute = nnx.Conv(conv.in_features, conv.out_features, (3, 3), padding=conv.padding, use_bias=False,
                        rngs=nnx.Rngs(0))  # fmt: skip
    absolute.kernel.set_value(jnp.abs(conv.kernel.get_value()))
    return _value_and_grads(absolute, jnp.abs(x), jnp.abs(g))


def test_fast_convolutions_and_their_gradients_agree_within_rounding(fmnist):
    # real images through the CNN's first layer; a 32-channel map through its second (padded)
    x1 = jnp.asarray(to_float(fmnist.train.images[:8])[..., None])
    x2 = jnp.asarray(np.random.default_rng(0).standard_normal((4, 26, 26, 32), np.float32))
    for x, c_out, padding in ((x1, 32, "VALID"), (x2, 64, "SAME")):
        c_in = x.shape[-1]
        plain, fast = _conv(c_in, c_out, padding), _conv(c_in, c_out, padding, fast=True)
        out_shape = jax.eval_shape(plain, x).shape
        g = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape, np.float32))
        ref, got = _value_and_grads(plain, x, g), _value_and_grads(fast, x, g)
        terms = _abs_terms(plain, x, g)
        n_pixels = out_shape[0] * out_shape[1] * out_shape[2]
        lengths = (9 * c_in, 9 * c_out, n_pixels)  # the sums' lengths: out, dx, dW
        for name, a, b, t, k in zip(("out", "dx", "dW"), ref, got, terms, lengths, strict=True):
            # (+ |a|: the bias added to the output rounds once more on each side)
            bound = 2 * (k - 1) * U * 1.01 * (np.asarray(t) + np.abs(np.asarray(a)))
            excess = np.abs(np.asarray(a) - np.asarray(b)) - bound
            assert excess.max() <= 0, (name, padding, float(excess.max()))


# Strided, padded, 1x1 and dilated windows on an odd x even input (7 x 8: a stride-2 window
# leaves the last row or column unread on one axis and not on the other):
# (kernel, strides, padding, dilation)
STRIDED = [
    (3, (2, 2), ((1, 1), (1, 1)), 1),  # the ResNet's 3x3 stride-2 conv (torch's padding=1)
    (3, (2, 2), "VALID", 1),
    (3, (2, 2), "SAME", 1),  # XLA's asymmetric padding: 0 before, 1 after on the even axis
    (1, (2, 2), "VALID", 1),  # the ResNet's 1x1 projection
    (3, (3, 2), ((2, 0), (0, 1)), 1),
    (3, (2, 2), ((1, 1), (1, 1)), 2),  # kernel dilation
]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _lax_or_fast(fast: bool, case: tuple, x, w, g):
    _, strides, padding, dilation = case
    conv = fastconv.conv_general_dilated if fast else jax.lax.conv_general_dilated
    out, back = jax.vjp(lambda x, w: conv(x, w, strides, padding, rhs_dilation=(dilation,) * 2,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)  # fmt: skip
    return (out, *back(g))


def _excess(case: tuple, x, w, g) -> dict[str, float]:
    """Per result (out, dx, dW): the largest ``|lax - fast| - bound``; <= 0 is within rounding."""
    ref, got = _lax_or_fast(False, case, x, w, g), _lax_or_fast(True, case, x, w, g)
    terms = _lax_or_fast(False, case, jnp.abs(x), jnp.abs(w), jnp.abs(g))
    k, (_, c_in, c_out), (b, oh, ow, _) = case[0], w.shape[1:], g.shape
    lengths = (k * k * c_in, k * k * c_out, b * oh * ow)
    excess = {}
    for name, a, f, t, n in zip(("out", "dx", "dW"), ref, got, terms, lengths, strict=True):
        assert a.shape == f.shape, (name, case)
        bound = 2 * (n - 1) * U * 1.01 * np.asarray(t)
        excess[name] = float((np.abs(np.asarray(a) - np.asarray(f)) - bound).max())
    return excess


def _case_data(case: tuple, rng):
    k, strides, padding, dilation = case
    x = jnp.asarray(rng.standard_normal((2, 7, 8, 3), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, 3, 5), np.float32))
    out = jax.eval_shape(lambda x, w: jax.lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=(dilation,) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")), x, w)  # fmt: skip
    return x, w, jnp.asarray(rng.standard_normal(out.shape, np.float32))


def test_strided_and_dilated_convolutions_and_their_gradients_agree_within_rounding(monkeypatch):
    """The derivation of the module docstring: out, dx and dW are sums of at most K products
    (out: k*k*C_in; dx: k*k*C_out, the most taps that reach one input pixel; dW: B*OH*OW),
    added in different orders by XLA's convolution and by the GEMMs, so they differ by at most
    ``2 (K - 1) u sum |terms|``; ``sum |terms|`` is the same computation on absolute values."""
    rng = np.random.default_rng(0)
    for case in STRIDED:
        excess = _excess(case, *_case_data(case, rng))
        assert max(excess.values()) <= 0, (case, excess)
    # the check can fail: a col2im that ignores the dilation puts dx's taps one pixel off
    undilated = fastconv.col2im
    monkeypatch.setattr(
        fastconv, "col2im", lambda dp, shape, kh, kw, s, d: undilated(dp, shape, kh, kw, s, (1, 1))
    )
    case = (3, (2, 2), ((2, 2), (2, 2)), 2)  # not in STRIDED: compiled afresh, with the planted col2im
    excess = _excess(case, *_case_data(case, rng))
    assert excess["out"] <= 0 and excess["dW"] <= 0 and excess["dx"] > 0, excess


def test_other_convolutions_pass_through_and_the_fast_ones_have_no_conv_primitive():
    x = jnp.ones((2, 12, 12, 4), jnp.float32)
    grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    grouped_plain = grouped(x)
    assert np.array_equal(grouped_plain, fastconv.enable(grouped)(x))  # the same call: lax's convolution
    assert "conv_general_dilated" in str(jax.make_jaxpr(grouped)(x))
    for padding, strides in (("VALID", 1), ("SAME", 2), (((1, 1), (1, 1)), 2)):
        fast = _conv(4, 4, padding, strides=strides, fast=True)
        assert "conv_general_dilated" not in str(jax.make_jaxpr(fast)(x)), (padding, strides)
        assert "conv_general_dilated" in str(jax.make_jaxpr(_conv(4, 4, padding, strides=strides))(x))


def _convs(fn, x) -> int:
    """How many XLA convolutions ``fn(x)`` traces to (a jaxpr, nothing compiled)."""
    return str(jax.make_jaxpr(fn)(x)).count("conv_general_dilated")


def test_the_measured_policy_routes_by_the_measured_shapes():
    # jaxprs only, so the modules are built blank (zeros, no initialiser compiled): what a
    # jaxpr holds depends on the shapes, never the values
    # (c_in, c_out, size, kernel, stride) -> whether the GEMM path takes it (fastconv.gemm_wins)
    cases = {(1, 8, 8, 3, 1): True, (3, 8, 8, 3, 1): True, (16, 8, 8, 1, 1): True, (16, 8, 8, 3, 2): True,
             (16, 8, 8, 3, 1): False, (8, 8, 8, 5, 1): False, (5, 8, 8, 3, 1): False,  # stride 1, > 4 channels
             (8, 512, 26, 3, 1): False}  # however large its output (the CNN's conv2 measured on Eigen)  # fmt: skip
    for (c_in, c_out, size, k, s), gemm in cases.items():
        conv = blank(
            nnx.Conv, in_features=c_in, out_features=c_out, kernel_size=(k, k), strides=s, padding="SAME"
        )
        x = jnp.ones((2, size, size, c_in), jnp.float32)
        assert _convs(fastconv.enable(conv, where="measured"), x) == (0 if gemm else 1), (c_in, k, s)
    # the ResNet: a stem (1 channel), a stride-1 stage, then 3x3 stride-2 convs and 1x1 shortcuts
    from jaxnet.models import resnet

    x = jnp.ones((2, 12, 12, 1), jnp.float32)
    model = blank(functools.partial(resnet.ResNet, (4, 8, 8), 1))
    model.eval()  # a trace must not update the running statistics
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
    stride1 = sum(m.strides in (1, (1, 1)) and m.kernel_size != (1, 1) and m.in_features > 4 for m in layers)
    assert 0 < stride1 < len(layers)
    assert _convs(model, x) == len(layers)
    assert _convs(fastconv.enable(nnx.clone(model), where="measured"), x) == stride1
    assert _convs(fastconv.enable(nnx.clone(model)), x) == 0  # a clone: make_jaxpr caches per callable


def _resnet_step(model, x, y) -> dict[str, np.ndarray]:
    """A train-mode step's numbers: logits, loss, every gradient, every updated running statistic."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, x, y):
        def loss(params, rest):
            module = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables: BatchNorm updates them
            logits = module(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (
                logits,
                nnx.state(module, nnx.BatchStat),
            )

        (value, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
        return {"loss": value, "logits": logits, "grad": grads, "running": stats}

    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.State(step(params, rest, x, y))))
    return {jax.tree_util.keystr(path): np.asarray(v, np.float64) for path, v in leaves}


def test_the_resnet_on_fastconv_is_within_the_float32_floor_of_the_idiomatic_port(fmnist):
    """The parity engine's rule (``jaxnet.parity.verdict``: ``err <= K * floor``, the floor the
    reference's own float32 error against its float64 run, never below one float32 u), with
    the idiomatic port as the reference: the ResNet on fastconv (3x3 stride 1 and 2, 1x1
    stride 2) in float32 against the plain port in float64, for the logits, the loss, every
    gradient and every running statistic of a train-mode step. The plain port passes compare
    against torch (test_parity_families), so this holds the fast one to the same floors without
    a torch run (``parity.compare`` of the fast ResNet against torch, 4,8,8 channels on 16
    images, passed all 216 rows by hand: it costs about a minute of CPU)."""
    from jaxnet.models import resnet

    x = jnp.asarray(to_float(fmnist.train.images[:8, 8:22, 7:20])[..., None])  # 14x13 crops: even and odd
    y = jnp.asarray(fmnist.train.labels[:8])
    model = resnet.ResNet((4, 8, 8), 1, rngs=nnx.Rngs(0))
    model.train()
    state = nnx.to_pure_dict(nnx.state(model))
    plain32 = _resnet_step(model, x, y)
    fast32 = _resnet_step(fastconv.enable(nnx.clone(model)), x, y)
    with jax.enable_x64(True):
        wide = nnx.eval_shape(lambda: resnet.ResNet((4, 8, 8), 1, dtype=jnp.float64, rngs=nnx.Rngs(0)))
        nnx.update(wide, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))
        wide.train()
        plain64 = _resnet_step(wide, jnp.asarray(x, jnp.float64), y)
    assert len(plain64) > 40
    assert_within_float32_floor(fast32, plain32, plain64)


def test_jaxnet_processes_give_convolutions_to_eigen_on_jaxlib_0_10_and_keep_a_users_choice(monkeypatch):
    """process.prepare adds XLA_CONV_FLAG on the jaxlib line it was measured on (XLA aborts on
    a flag it does not know, so never on another); a user's own YNN fusion types stay theirs."""
    from importlib.metadata import version

    from jaxnet import process

    # read from version.py, not the installed metadata (a dev build's adds a suffix)
    assert process.jaxlib_version() and version("jaxlib").startswith(process.jaxlib_version())
    monkeypatch.setattr(process, "jaxlib_version", lambda: "0.10.2")
    assert process.xla_flags("") == process.XLA_CONV_FLAG
    assert process.xla_flags("--xla_cpu_ftz=true") == f"--xla_cpu_ftz=true {process.XLA_CONV_FLAG}"
    mine = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    assert process.xla_flags(mine) == mine
    monkeypatch.setattr(process, "jaxlib_version", lambda: "0.11.0")
    assert process.xla_flags("") == ""
    monkeypatch.setattr(process, "jaxlib_version", lambda: "")  # no jaxlib: a torch-only install
    assert process.xla_flags("--xla_cpu_ftz=true") == "--xla_cpu_ftz=true"
    monkeypatch.setattr(process, "jaxlib_version", lambda: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "")
    jax.devices()  # JAX has started here: XLA has read its flags, so the new one comes too late
    assert "XLA_FLAGS" in process.prepare()
    assert process.XLA_CONV_FLAG in os.environ["XLA_FLAGS"].split()
    assert "XLA_FLAGS" not in process.prepare()  # twice: added once, nothing new to be late
    assert os.environ["XLA_FLAGS"].split().count(process.XLA_CONV_FLAG) == 1
    monkeypatch.delenv("XLA_FLAGS")  # unset, as on most machines: late all the same
    assert "XLA_FLAGS" in process.prepare()
    assert os.environ["XLA_FLAGS"] == process.XLA_CONV_FLAG
