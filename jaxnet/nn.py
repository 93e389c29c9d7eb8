"""NNX layers with torch's conventions where Flax's differ (and a port must match torch's numbers).

:class:`TorchBatchNorm` is ``nnx.BatchNorm`` with torch's defaults and torch's running variance:

==================  ==============================  ======================================
                    ``torch.nn.BatchNorm2d``        ``nnx.BatchNorm``
==================  ==============================  ======================================
momentum            0.1 (weight of the new batch)   0.99 default (weight of the old value):
                                                    torch's 0.1 is Flax's 0.9
running variance    unbiased batch variance         biased batch variance
                    (times n / (n - 1))
batch variance      two-pass                        E[x^2] - E[x]^2 by default
                                                    (``use_fast_variance``): cancels in
                                                    float32 where |mean| >> std
num_batches_tracked counted                         none (jaxnet counts it for comparison)
statistics' dtype   the parameters'                 float32, whatever ``param_dtype``
==================  ==============================  ======================================

Example:
    >>> bn = TorchBatchNorm(3, rngs=nnx.Rngs(0))
    >>> bn(jnp.ones((4, 2, 2, 3))).shape
    (4, 2, 2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights


class TorchBatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (features on the last axis) that keeps torch's running statistics.

    In train mode: ``y = (x - mean) / sqrt(var + eps) * scale + bias`` with the batch's mean
    and biased variance (two-pass); then ``running_mean = m * running_mean + (1 - m) * mean``
    and ``running_var = m * running_var + (1 - m) * var * n / (n - 1)``, ``n`` the number of
    values per feature, ``m`` Flax's momentum (torch's ``1 - momentum``: 0.9 for torch's 0.1).
    """

    def __init__(self, num_features: int, *, momentum: float = 0.9, epsilon: float = 1e-5, **kwargs) -> None:
        super().__init__(num_features, momentum=momentum, epsilon=epsilon, use_fast_variance=False, **kwargs)
        dtype = kwargs.get(
            "param_dtype", jnp.float32
        )  # nnx keeps its statistics in float32 whatever the params'
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), dtype))

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask=None) -> jax.Array:
        running = self.use_running_average if use_running_average is None else use_running_average
        if running or mask is not None:
            return super().__call__(x, running, mask=mask)
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        mean = x.mean(axes)
        var = jnp.square(x - mean).mean(axes)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            y = y * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        m = self.momentum
        stop = jax.lax.stop_gradient
        self.mean[...] = stop(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = stop(m * self.var[...] + (1 - m) * var * (n / max(n - 1, 1)))
        return y


def dot_product_attention(query, key, value, bias=None, mask=None, *, dropout_rng=None, dropout_rate=0.0,
                          broadcast_dropout=True, deterministic=True, dtype=None, precision=None, **unused):  # fmt: skip
    """``nnx.dot_product_attention`` computed in the inputs' own dtype, for ``attention_fn=``.

    Without dropout, ``nnx.dot_product_attention`` hands the work to
    ``jax.nn.dot_product_attention``, whose XLA implementation takes the logits and the softmax
    in float32 even for float64 inputs: a float64 port then agrees with torch to float32's
    1e-7, not float64's 1e-16. This one computes ``softmax(q k^T / sqrt(d)) v`` in the
    arithmetic of its inputs (the same function, the same mask convention: True attends).
    """
    weights = dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout=broadcast_dropout, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, deterministic=deterministic, dtype=dtype, precision=precision,
    )  # fmt: skip
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)
