"""The NNX halves of ``port_models``' pairs, importable without torch (a recorded check's process)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.nn import TorchBatchNorm, dot_product_attention
from jaxnet.parity import family


def blank(cls, **kw) -> nnx.Module:
    """``cls(rngs=nnx.Rngs(0), **kw)`` with zeros for every array, its initialisers never run
    (as ``jaxnet.parity.family.pair`` builds a family's port): ``compare`` carries the torch
    module's weights and buffers onto the port, so the port's own initial values are never
    read. Running them compiles a score of one-op programs per model kind (~0.8 CPU-s per
    process); ``nnx.eval_shape`` traces them, compiling nothing. A dropout's key: key 0."""
    return family.blank(lambda: cls(rngs=nnx.Rngs(0), **kw))


class NNXBN(nnx.Module):
    def __init__(
        self, c: int = 4, *, rngs: nnx.Rngs, bn=TorchBatchNorm, padding=((1, 1), (1, 1)), momentum=0.9
    ) -> None:
        self.conv1 = nnx.Conv(1, c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn1 = bn(c, momentum=momentum, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(c, 2 * c, (3, 3), strides=2, padding=padding, use_bias=False, rngs=rngs)
        self.bn2 = bn(2 * c, momentum=momentum, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(2 * c, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((1, 2)))


class NNXBlock(nnx.Module):
    def __init__(
        self,
        vocab: int = 11,
        block: int = 8,
        e: int = 16,
        heads: int = 2,
        *,
        rngs: nnx.Rngs,
        invert_mask: bool = False,
        gelu_approximate: bool = False,
        ln_eps: float = 1e-5,
    ) -> None:
        self.wte = nnx.Embed(vocab, e, rngs=rngs)
        self.wpe = nnx.Embed(block, e, rngs=rngs)
        self.ln1 = nnx.LayerNorm(e, epsilon=ln_eps, rngs=rngs)
        # attention_fn: nnx's default computes the softmax in float32 even in float64 (jaxnet.nn)
        self.attn = nnx.MultiHeadAttention(
            heads, e, decode=False, attention_fn=dot_product_attention, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(e, epsilon=ln_eps, rngs=rngs)
        self.fc = nnx.Linear(e, 4 * e, rngs=rngs)
        self.proj = nnx.Linear(4 * e, e, rngs=rngs)
        self.ln_f = nnx.LayerNorm(e, epsilon=ln_eps, rngs=rngs)
        self.invert_mask, self.gelu_approximate = invert_mask, gelu_approximate

    def __call__(self, ids, padding_mask):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(jnp.arange(t))
        h = self.ln1(x)
        causal = nnx.make_causal_mask(ids)  # [B, 1, T, T], True = attend
        keys = padding_mask[:, None, None, :]
        mask = nnx.combine_masks(causal, ~keys if self.invert_mask else keys)
        x = x + self.attn(h, mask=mask)
        x = x + self.proj(jax.nn.gelu(self.fc(self.ln2(x)), approximate=self.gelu_approximate))
        return self.wte.attend(self.ln_f(x))


class NNXMLP(nnx.Module):
    """The tutorial MLP's shape at 12x12 inputs (its square middle layer is where a weight loaded
    untransposed still fits); ``act`` the activation between the layers."""

    def __init__(self, hidden: int = 16, *, rngs: nnx.Rngs, act=jax.nn.relu) -> None:
        self.linear_relu_stack = nnx.Sequential(
            nnx.Linear(144, hidden, rngs=rngs),
            act,
            nnx.Linear(hidden, hidden, rngs=rngs),
            act,
            nnx.Linear(hidden, 10, rngs=rngs),
        )

    def __call__(self, x):
        return self.linear_relu_stack(x.reshape(x.shape[0], -1))


def max_pool(x):
    """A 2x2 max-pool as nnx's (torch's tie rule: the gradient goes to the first maximum)."""
    return nnx.max_pool(x, (2, 2), (2, 2))


def reshape_max_pool(x):
    """A 2x2 max-pool written as reshape-and-max: equal forward, but at a tie ``max``'s gradient
    is split between the tied elements (torch gives it all to the first)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


class NNXCNN(nnx.Module):
    """examples/mnist's CNN in small (channels-last): conv -> ReLU -> conv -> ReLU -> 2x2
    max-pool -> dropout -> Linear, on 12x12 images."""

    def __init__(self, c: int = 4, *, rngs: nnx.Rngs, pool=max_pool) -> None:
        self.conv1 = nnx.Conv(1, c, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv2 = nnx.Conv(c, c, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.fc = nnx.Linear(c * 36, 10, rngs=rngs)
        self.pool = pool

    def __call__(self, x):
        x = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        x = self.dropout(self.pool(x))
        return self.fc(x.reshape(x.shape[0], -1))


class NNXUp(nnx.Module):
    """A strided conv down, a ConvTranspose back up (torch's ``padding=1, output_padding=1`` is
    lax's ``(k - 1 - 1, k - 1 - 1 + 1)``), a Linear head; channels-last, 12x12 images."""

    def __init__(self, c: int = 4, *, rngs: nnx.Rngs) -> None:
        self.down = nnx.Conv(1, c, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.up = nnx.ConvTranspose(c, 2, (3, 3), strides=(2, 2), padding=((1, 2), (1, 2)), rngs=rngs)
        self.fc = nnx.Linear(2 * 144, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.up(jax.nn.relu(self.down(x))))
        return self.fc(x.reshape(x.shape[0], -1))
