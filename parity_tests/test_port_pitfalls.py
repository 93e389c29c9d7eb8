"""The porting pitfalls, each planted in an NNX port the way a porting guide warns against
(nnx's BatchNorm momentum, 'SAME' padding, the inverted mask...): each must fail through
``parity.compare`` in float32 alone, its first failing row naming the module where it acts.
``python -m parity_tests.pitfalls`` records by how much (docs/pitfalls.md).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import pytest
import torch
from flax import nnx

from jaxnet import parity
from jaxnet.nn import dot_product_attention
from parity_tests.port_models import TorchBN, token_batch
from parity_tests.test_port_engine import block_pair, bn_pair, first_failure


@pytest.fixture(scope="module")
def images(fmnist):
    """12x12 crops of real Fashion-MNIST images (the centre), and their labels."""
    return fmnist.train.float_images()[:16, :, 8:20, 8:20].copy(), fmnist.train.labels[:16]


PITFALLS = {
    # name: (pair builder, what fails first)
    "batchnorm momentum 0.99 (nnx's default) for torch's 0.1": (
        lambda: bn_pair(momentum=0.99),
        "running bn1.running_mean",
    ),
    "batchnorm running variance biased (plain nnx.BatchNorm)": (
        lambda: bn_pair(bn=functools.partial(nnx.BatchNorm, use_fast_variance=False)),
        "running bn1.running_var",
    ),
    "'SAME' padding on a stride-2 conv (torch pads symmetrically)": (
        lambda: bn_pair(padding="SAME"),
        "conv2",
    ),
    "attention mask polarity inverted": (lambda: block_pair(invert_mask=True), "attn"),
    "GELU tanh approximation (jax.nn.gelu's default)": (lambda: block_pair(gelu_approximate=True), "proj"),
    "LayerNorm eps 1e-6 (Flax's default) for torch's 1e-5": (
        lambda: nanogpt_scale(block_pair(ln_eps=1e-6)),
        "ln1",
    ),
    "Embedding padding_idx row still receiving gradient": (
        lambda: block_pair(torch_kw={"padding_idx": 0}),
        "wte.weight",
    ),
}


@pytest.mark.parametrize("name", list(PITFALLS))
def test_each_pitfall_fails_in_float32_at_the_module_where_it_acts(name, images):
    build, where = PITFALLS[name]
    pair = build()
    if isinstance(pair[0], TorchBN):
        report = parity.compare(*pair, *images, channels_last=True, dtypes=("float32",), steps=0)
    else:
        inputs, targets = token_batch()
        if "padding_idx" in name:
            inputs[0][:, 0] = 0  # the padding token occurs
        report = parity.compare(*pair, inputs, targets, dtypes=("float32",), steps=0)
    assert first_failure(report) == where, parity.summary(report)
    assert (
        report.environment["first difference"].startswith(f"{where} (float32)")
        or where in report.environment["first difference"]
    )


def nanogpt_scale(pair):
    """Embeddings at nanoGPT's initial scale (std 0.02): eps is then 1/400 of the variance
    LayerNorm divides by, and a wrong eps moves its output by ~1e-3, far above float32's
    floors on any CPU (at torch's N(0, 1) embeddings it would be ~5e-6, too near them)."""
    with torch.no_grad():
        for emb in (pair[0].wte, pair[0].wpe):
            emb.weight.mul_(0.02)
    return pair


def unscaled_attention(query, key, value, bias=None, mask=None, **kw):
    """A port that forgot the 1/sqrt(head_dim) scale."""
    return dot_product_attention(
        query * jnp.sqrt(query.shape[-1]).astype(query.dtype), key, value, bias, mask, **kw
    )


def test_unscaled_attention_logits_fail_at_the_attention():
    pair = block_pair()
    pair[1].attn.attention_fn = unscaled_attention
    inputs, targets = token_batch()
    report = parity.compare(*pair, inputs, targets, dtypes=("float32",), steps=0)
    assert first_failure(report) == "attn"
