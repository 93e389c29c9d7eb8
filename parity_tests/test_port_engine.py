"""The port engine on the models people port: BatchNorm (state, train mode), a transformer block
(token ids and a padding mask, causal ``nn.MultiheadAttention``, a tied head), the porting
pitfalls each caught at the right module, and every refusal a one-line error.

The pairs are in ``port_models.py``; tiny sizes keep each comparison to seconds. A pitfall is
planted by building the NNX port the way a porting guide warns against (nnx's BatchNorm
momentum, 'SAME' padding, the inverted mask...); each must fail in float32 alone, and its
first failing row must name the module where it acts.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnet import parity
from jaxnet.config import PORT_RECIPES
from jaxnet.errors import JaxnetError
from jaxnet.nn import TorchBatchNorm
from jaxnet.rules import RULES, conv_transpose, linear
from parity_tests.port_models import NNXBN, NNXBlock, TorchBlock, TorchBN, blank, token_batch


@pytest.fixture(scope="module")
def images(crops16):
    return crops16


def bn_pair(**port):
    torch.manual_seed(0)
    return TorchBN(), blank(NNXBN, **port)


def block_pair(torch_kw=None, **port):
    torch.manual_seed(0)
    return TorchBlock(**(torch_kw or {})), blank(NNXBlock, **port)


def first_failure(report) -> str:
    row = report.first_failure()
    assert row is not None, "the planted pitfall passed"
    return row.quantity


# ---------------------------------------------------------------------------- correct ports pass


def test_batchnorm_port_passes_in_both_dtypes_with_train_mode_steps(images):
    """Eval and train mode forwards, the running statistics (after a forward and after every
    step, num_batches_tracked exactly), gradients, and SGD steps in train mode."""
    recipe = PORT_RECIPES["sgd-nesterov-masked-cosine"]  # Nesterov, decay off BatchNorm and biases, cosine
    report = parity.compare(*bn_pair(), *images, channels_last=True, optimizer=recipe, steps=2)
    assert report.passed, parity.summary(report)
    quantities = {r.quantity for r in report.rows}
    assert {
        "running bn1.running_mean",
        "running bn2.running_var",
        "running bn1.num_batches_tracked",
    } <= quantities
    assert "sgd: bn2.running_var" in quantities and "sgd: bn1.num_batches_tracked" in quantities
    assert any("train mode" in r.section for r in report.rows)
    assert {r.dtype for r in report.rows} == {"float32", "float64"}


def test_transformer_block_passes_with_ids_and_a_padding_mask():
    """Two inputs (int64 ids, a bool mask) keep their dtypes; sequence cross-entropy with
    ignore_index; the tied head is one parameter; AdamW steps."""
    inputs, targets = token_batch()
    # nanoGPT's recipe: AdamW, warm-up then cosine, clipping at 1.0, decay off norms, biases, embeddings
    opt = replace(
        PORT_RECIPES["adamw-warmup-cosine-clip"],
        lr=1e-2,
        warmup_steps=1,
        no_decay=("*.bias", "ln*", "wte.*", "wpe.*"),
    )
    report = parity.compare(*block_pair(), inputs, targets, optimizer=opt, steps=3)
    assert report.passed, parity.summary(report)
    assert "ids" not in report.environment["inputs"] and "int64" in report.environment["inputs"]
    grads = {r.quantity for r in report.rows if r.kind == "gradient"}
    assert {"attn.in_proj_weight", "attn.out_proj.weight", "wte.weight"} <= grads
    assert "head.weight" not in grads  # tied: the embedding's one parameter


# ---------------------------------------------------------------------------- refusals


class Scaler(torch.nn.Module):
    """A module with a parameter of its own and no built-in rule."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(10))

    def forward(self, x):
        return x * self.gain


def refusal(*args, **kwargs) -> str:
    with pytest.raises(JaxnetError) as err:
        parity.compare(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_refusal_is_one_line_naming_the_fix(images):
    x, y = images
    inputs, targets = token_batch()
    # wrong number of inputs: the block takes two
    assert "failed on the inputs" in refusal(*block_pair(), inputs[0], targets, steps=0)
    # targets and inputs disagree on the number of examples
    assert "examples" in refusal(*block_pair(), inputs, targets[:2], steps=0)
    # a module no rule covers: named, with what it needs
    torch_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10), Scaler())
    message = refusal(torch_model, blank(NNXBN), x, y, steps=0)
    assert "'2' (Scaler)" in message and "Rule(" in message
    # an unmapped parameter: both sides listed
    assert "torch only" in refusal(torch.nn.Sequential(torch.nn.Linear(144, 10)), blank(NNXBN), x, y)
    # a torch Linear where the port has a Conv: the rule's class check
    t, j = bn_pair()
    t.fc = torch.nn.Conv2d(8, 10, 1)  # same name, another kind
    assert "'fc' is a conv but the nnx module there is Linear" in refusal(
        t, j, x, y, channels_last=True, steps=0
    )
    # BatchNorm with a cumulative average
    t, j = bn_pair()
    t.bn1.momentum = None
    assert "momentum=None" in refusal(t, j, x, y, channels_last=True, steps=0)
    # a non-numeric input, an unknown loss
    assert "numeric" in refusal(*bn_pair(), np.array(["a"] * 16), y)
    assert "loss must be" in refusal(*bn_pair(), x, y, loss="hinge")


def test_a_module_kind_mismatch_names_both_classes(images):
    """A torch Conv2d whose NNX counterpart at the same path is an nnx.Linear."""

    class Port(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Linear(3, 4, rngs=rngs)

        def __call__(self, x):
            return self.conv(x)

    class Torch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return self.conv(x)

    message = refusal(Torch(), Port(nnx.Rngs(0)), *images, steps=0)
    assert "'conv' is a conv" in message and "Linear" in message


def test_outputs_of_different_structure_are_an_error():
    class TorchWrap(torch.nn.Module):  # returns the logits
        def __init__(self):
            super().__init__()
            self.block = TorchBlock()

        def forward(self, ids, mask):
            return self.block(ids, mask)

    class Pair(nnx.Module):  # returns (logits, logits)
        def __init__(self, rngs):
            self.block = NNXBlock(rngs=rngs)

        def __call__(self, ids, mask):
            out = self.block(ids, mask)
            return out, out

    torch.manual_seed(0)
    inputs, targets = token_batch()
    message = refusal(TorchWrap(), blank(Pair), inputs, targets, steps=0)
    assert "outputs differ in structure" in message and "output.1" in message


# ---------------------------------------------------------------------------- the layout rules


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3))
def test_rules_invert_each_other(rank, c_in, c_out, heads):
    """from_torch(to_torch(p)) == p for every built-in rule, any conv rank, any head count."""
    rng = np.random.default_rng([rank, c_in, c_out, heads])
    kernel = rng.normal(size=(*(2,) * rank, c_in, c_out))
    cases = [
        (RULES["conv"], {"kernel": kernel, "bias": rng.normal(size=c_out)}),
        (conv_transpose(False), {"kernel": kernel}),
        (conv_transpose(True), {"kernel": kernel}),
        (linear((c_in, 2, 3)), {"kernel": rng.normal(size=(6 * c_in, c_out))}),
        (RULES["batchnorm"], {k: rng.normal(size=c_out) for k in ("scale", "bias", "mean", "var")}),
        (RULES["embedding"], {"embedding": rng.normal(size=(c_in, c_out))}),
    ]
    e, d = heads * 2, 2
    mha = {f"{n}.kernel": rng.normal(size=(e, heads, d)) for n in ("query", "key", "value")}
    mha |= {f"{n}.bias": rng.normal(size=(heads, d)) for n in ("query", "key", "value")}
    cases.append(
        (RULES["mha"], mha | {"out.kernel": rng.normal(size=(heads, d, e)), "out.bias": rng.normal(size=e)})
    )
    for rule, params in cases:
        shapes = {k: v.shape for k, v in params.items()}
        back = rule.from_torch(rule.to_torch(params), shapes)
        assert back.keys() == params.keys()
        for k, v in params.items():
            np.testing.assert_array_equal(back[k], v)  # a permutation: exact


def test_mha_rule_matches_torch_packing():
    """torch's in_proj_weight rows are [W_q; W_k; W_v]: the query kernel is W_q transposed,
    split by head (the rule computes q = x @ kernel exactly as torch's x @ W_q.T)."""
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    state = {k.removeprefix(""): v.detach().numpy() for k, v in attn.state_dict().items()}
    placed = RULES["mha"].from_torch(state, {"query.kernel": (8, 2, 4)})
    x = np.random.default_rng(0).normal(size=(3, 8))
    w_q = state["in_proj_weight"][:8]
    np.testing.assert_allclose(
        np.einsum("be,ehd->bhd", x, placed["query.kernel"]).reshape(3, 8), x @ w_q.T, rtol=1e-12
    )


def test_torch_batchnorm_keeps_torchs_running_variance():
    """jaxnet.nn.TorchBatchNorm: running_var from the unbiased batch variance, momentum 0.9 =
    torch's 0.1; plain nnx.BatchNorm uses the biased one (n/(n-1) apart after one step from 0)."""
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float64)
    with jax.enable_x64(True):
        ours = TorchBatchNorm(3, rngs=nnx.Rngs(0), param_dtype=jnp.float64)
        plain = nnx.BatchNorm(
            3, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0), param_dtype=jnp.float64
        )
        for bn in (ours, plain):  # statistics from 0, in float64 (nnx's own are float32 always)
            bn.mean, bn.var = (
                nnx.BatchStat(jnp.zeros(3, jnp.float64)),
                nnx.BatchStat(jnp.zeros(3, jnp.float64)),
            )
            bn.train()
            bn(jnp.asarray(x))
    bn_t = torch.nn.BatchNorm1d(3).double()
    bn_t.running_var.zero_()
    bn_t(torch.tensor(x))
    np.testing.assert_allclose(
        np.asarray(ours.var[...]), bn_t.running_var.numpy(), rtol=1e-14
    )  # float64, 5 values
    np.testing.assert_allclose(np.asarray(plain.var[...]) * 5 / 4, bn_t.running_var.numpy(), rtol=1e-14)
