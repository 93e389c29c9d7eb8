"""The porting pitfalls, each planted in an NNX port the way a porting guide warns against
(nnx's BatchNorm momentum, 'SAME' padding, the inverted mask, a ConvTranspose kernel
not flipped, a max-pool that splits its gradient at ties...): each must fail through
``parity.compare`` in float32 alone, its first failing row naming the module where it acts.
``python -m parity_tests.pitfalls`` records by how much (docs/pitfalls.md).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxnet import parity
from jaxnet.nn import dot_product_attention
from jaxnet.rules import Rule
from parity_tests.nnx_ports import reshape_max_pool
from parity_tests.port_models import NNXCNN, NNXUp, TorchBN, TorchCNN, TorchUp, blank, token_batch
from parity_tests.test_port_engine import block_pair, bn_pair, first_failure


@pytest.fixture(scope="module")
def images(crops16):
    return crops16


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
    "attention logits not scaled by 1/sqrt(head_dim)": (lambda: unscaled(block_pair()), "attn"),
    # a hand-written rule that moves the axes as for a Conv and forgets the spatial flip
    "ConvTranspose kernel not flipped": (lambda: up_pair(), "up"),
    # reshape-and-max: the same forward; at a tie its gradient is split (the max-pool-tie probe)
    "max-pool as reshape-and-max (gradient split at ties)": (
        lambda: cnn_pair(pool=reshape_max_pool),
        "max-pool ties: grad conv1.weight",
    ),
}


def up_pair():
    torch.manual_seed(0)
    return TorchUp(), blank(NNXUp)


def cnn_pair(**port):
    torch.manual_seed(0)
    return TorchCNN(), blank(NNXCNN, **port)


def unscaled(pair):
    pair[1].attn.attention_fn = unscaled_attention
    return pair


def unflipped_conv_transpose() -> Rule:
    """torch ``[I, O, kh, kw]`` -> NNX ``[kh, kw, I, O]`` by moving axes only, as for a Conv:
    what ``nnx.ConvTranspose`` (``transpose_kernel=False``) needs is that kernel flipped in space."""
    return Rule(
        lambda p: {"weight": np.ascontiguousarray(p["kernel"].transpose(2, 3, 0, 1)), "bias": p["bias"]},
        lambda t, shapes: {
            "kernel": np.ascontiguousarray(t["weight"].transpose(2, 3, 0, 1)),
            "bias": t["bias"],
        },
    )


def compare_pitfall(name: str, images, dtypes=("float32",)):
    """``parity.compare`` of pitfall ``name``'s pair on its inputs (no steps)."""
    build, _ = PITFALLS[name]
    pair = build()
    torch_module = pair[0]
    options = {"dtypes": dtypes, "steps": 0}
    if isinstance(torch_module, TorchBN):
        return parity.compare(*pair, *images, channels_last=True, **options)
    if isinstance(torch_module, TorchUp):
        rules = {"up": unflipped_conv_transpose()}
        return parity.compare(
            *pair, *images, channels_last=True, flatten={"fc": (2, 12, 12)}, rules=rules, **options
        )
    if isinstance(torch_module, TorchCNN):
        return parity.compare(*pair, *images, channels_last=True, flatten={"fc": (4, 6, 6)}, pool_inputs=["conv2"],
                              relu_inputs=["conv1", "conv2"], **options)  # fmt: skip
    inputs, targets = token_batch()
    if "padding_idx" in name:
        inputs[0][:, 0] = 0  # the padding token occurs
    return parity.compare(*pair, inputs, targets, **options)


@pytest.mark.parametrize("name", list(PITFALLS))
def test_each_pitfall_fails_in_float32_at_the_module_where_it_acts(name, images):
    where = PITFALLS[name][1]
    report = compare_pitfall(name, images)
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
