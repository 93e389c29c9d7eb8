"""The CNN of PyTorch's ``examples/mnist`` in Flax NNX (``torchref/models/cnn.py`` is the reference).

``conv1 -> ReLU -> conv2 -> ReLU -> max-pool 2x2 -> dropout1 -> flatten -> fc1 -> ReLU ->
dropout2 -> fc2 -> log_softmax``. The attributes are torch's, so parameter paths map one to
one onto its state-dict keys through :func:`jaxnet.model.to_torch_layout`::

    jaxnet params path          torch state-dict key
    conv1.kernel [3,3,1,c1]     conv1.weight [c1,1,3,3]      (HWIO <-> OIHW)
    conv2.kernel [3,3,c1,c2]    conv2.weight [c2,c1,3,3]
    fc1.kernel [c2*144,hidden]  fc1.weight [hidden,c2*144]   (K = W.T, no permutation)
    fc2.kernel [hidden,classes] fc2.weight [classes,hidden]

Input and the conv activations handed out are NCHW, like torch's. The convs run in NHWC
(Flax's layout) and the pooled map goes back to NCHW before flattening, so ``flatten``
orders features as torch's ``torch.flatten(x, 1)`` does and fc1's kernel is torch's weight
transposed.

Dropout holds no RNG state (``nnx.split(model, nnx.Param)`` is the whole model): pass
``masks`` (the same 0/1 arrays torch gets), or a ``key`` to draw them, or neither (eval).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnet.models.mlp import relu, torch_linear_init

if TYPE_CHECKING:
    from jaxnet.config import CNNConfig

Masks = tuple[jax.Array, jax.Array]


class Net(nnx.Module):
    """``examples/mnist``'s ``Net``; the example's sizes are the defaults.

    Example:
        >>> model = Net(rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 1, 28, 28))).shape
        (2, 10)
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        dropout1: float = 0.25,
        dropout2: float = 0.5,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        c1, c2 = (int(c) for c in channels)

        def conv(cin: int, cout: int) -> nnx.Conv:
            init = torch_linear_init(cin * 3 * 3)  # nn.Conv2d's default: U(+-1/sqrt(cin * kh * kw))
            return nnx.Conv(
                cin, cout, (3, 3), padding="VALID", kernel_init=init, bias_init=init, param_dtype=dtype, rngs=rngs
            )  # fmt: skip

        def linear(fan_in: int, fan_out: int) -> nnx.Linear:
            init = torch_linear_init(fan_in)
            return nnx.Linear(fan_in, fan_out, kernel_init=init, bias_init=init, param_dtype=dtype, rngs=rngs)

        self.conv1 = conv(1, c1)
        self.conv2 = conv(c1, c2)
        self.fc1 = linear(c2 * 12 * 12, hidden)
        self.fc2 = linear(hidden, num_classes)
        self.dropout1 = float(dropout1)  # rates, as nn.Dropout(p) keeps them; static, not state
        self.dropout2 = float(dropout2)
        self.max_pool = nnx.max_pool  # static; jaxnet.fastconv.enable swaps in jaxnet.fastpool's

    def __call__(
        self, x: jax.Array, *, masks: Masks | None = None, key: jax.Array | None = None
    ) -> jax.Array:
        """``[N, 1, 28, 28] -> [N, num_classes]`` log-probabilities.

        ``masks``: 0/1 arrays ``([N, c2, 12, 12], [N, hidden])`` applied as torch applies its
        draw. ``key``: train mode, keep-masks drawn with ``jax.random.bernoulli`` (``masks`` win
        if both are given). Neither: eval.
        """
        return activations(self, x, masks, key=key)["log_softmax"]


def dropout_masks(model: Net, key: jax.Array, batch: int, dtype: jnp.dtype = jnp.float32) -> Masks:
    """Fresh 0/1 keep-masks for both dropouts (keep probability ``1 - p``), shaped as ``masks``."""
    c2, hidden = model.conv2.out_features, model.fc1.out_features
    k1, k2 = jax.random.split(key)
    m1 = jax.random.bernoulli(k1, 1 - model.dropout1, (batch, c2, 12, 12))
    m2 = jax.random.bernoulli(k2, 1 - model.dropout2, (batch, hidden))
    return m1.astype(dtype), m2.astype(dtype)


def _dropout(x: jax.Array, mask: jax.Array | None, p: float) -> jax.Array:
    """torch's dropout given its draw: ``x * (mask / (1 - p))`` (the scale is rounded before the product)."""
    return x if mask is None else x * (mask.astype(x.dtype) / (1 - p))


def max_pool2d(x: jax.Array, pool=nnx.max_pool) -> jax.Array:
    """``F.max_pool2d(x, 2)`` on NHWC: 2x2 windows, stride 2, no padding (a trailing odd row
    dropped), computed by ``pool`` (``nnx.max_pool``'s signature; the model's ``max_pool``)."""
    return pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


def activations(
    model: Net, x: jax.Array, masks: Masks | None = None, *, key: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Every intermediate output keyed like ``torchref.cnn.activations`` (conv ones NCHW)."""
    if masks is None and key is not None:
        masks = dropout_masks(model, key, x.shape[0], x.dtype)
    m1, m2 = masks if masks is not None else (None, None)
    nchw = lambda t: jnp.transpose(t, (0, 3, 1, 2))  # noqa: E731
    out: dict[str, jax.Array] = {}
    h = model.conv1(jnp.transpose(x, (0, 2, 3, 1)))  # NCHW -> NHWC
    out["conv1"] = nchw(h)
    h = relu(h)
    out["relu1"] = nchw(h)
    h = model.conv2(h)
    out["conv2"] = nchw(h)
    h = relu(h)
    out["relu2"] = nchw(h)
    # back to NCHW: flatten orders features as torch does
    out["pool"] = h = nchw(max_pool2d(h, model.max_pool))
    out["dropout1"] = h = _dropout(h, m1, model.dropout1)
    out["flatten"] = h = h.reshape(h.shape[0], -1)
    out["fc1"] = h = model.fc1(h)
    out["relu3"] = h = relu(h)
    out["dropout2"] = h = _dropout(h, m2, model.dropout2)
    out["fc2"] = h = model.fc2(h)
    out["log_softmax"] = jax.nn.log_softmax(h, axis=1)
    return out


def nll_loss(log_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """``F.nll_loss`` (mean): ``-mean(log_probs[i, labels[i]])``."""
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def loss_fn(
    params: nnx.State,
    graphdef: nnx.GraphDef,
    x: jax.Array,
    y: jax.Array,
    masks: Masks | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """The example's training loss as a pure function of ``params`` (what ``jax.grad`` differentiates)."""
    return nll_loss(nnx.merge(graphdef, params)(x, masks=masks, key=key), y)


def build(config: CNNConfig, *, seed: int = 0, dtype: str = "float32") -> Net:
    """A freshly initialised model from a ``CNNConfig`` (torch's init distribution; JAX's RNG stream)."""
    return from_config(dataclasses.asdict(config), seed=seed, dtype=dtype)


def from_config(fields: dict, *, seed: int = 0, dtype: str = "float32") -> Net:
    """The registry's builder: a fresh model of ``CNNConfig`` fields."""
    f = fields
    return Net(
        f["channels"], f["hidden"], f["num_classes"], f["dropout1"], f["dropout2"],
        dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed),
    )  # fmt: skip


def _by_name(masks: dict | None) -> Masks | None:
    return (masks["dropout1"], masks["dropout2"]) if masks else None


def named_activations(model: Net, x: jax.Array, masks: dict | None = None) -> dict[str, jax.Array]:
    """:func:`activations` with the dropout masks given by name (``dropout1``, ``dropout2``)."""
    return activations(model, x, _by_name(masks))


def apply(model: Net, x: jax.Array, masks: dict | None = None) -> jax.Array:
    """``model(x)``, its dropouts given ``masks`` by name, or off."""
    return model(x, masks=_by_name(masks))
