"""torchvision's BasicBlock ResNet in Flax NNX, and its hand-written weight mapping from torch.

The idiomatic port of ``torchref/models/resnet.py``: ``nnx.Conv`` and ``nnx.BatchNorm`` on
NHWC images ``[N, 28, 28, 1]``, the same attribute names (``conv1``, ``bn1``,
``layer1[0].conv1``, ``layer2[0].downsample[0]``, ``fc``), stages and shortcuts held in
``nnx.List`` so that NNX paths read as torch's keys (``layer1.0.conv1``; an ``nnx.Sequential``
would add a ``layers`` level). Train/eval mode as in torch: ``model.train()`` makes every
BatchNorm normalise with the batch's statistics and update its running averages,
``model.eval()`` normalises with the running averages.

Three settings are chosen where torch and Flax defaults differ:

- ``padding=((1, 1), (1, 1))`` on the 3x3 convs, not ``'SAME'``: with stride 2 on an even
  size, ``'SAME'`` pads 0 before and 1 after (XLA's rule), torch pads 1 on both sides, so
  the stride-2 convs would sample other pixels (flax#2993).
- ``nnx.BatchNorm(momentum=0.9, epsilon=1e-5)``: Flax's momentum is the weight of the old
  average, torch's (0.1) that of the new batch; Flax's default 0.99 would be torch's 0.01.
- ``use_fast_variance=False``: the batch variance as ``mean((x - mean)^2)``, as torch
  computes it, not ``mean(x^2) - mean^2``, which cancels where ``|mean| >> std``.

And one where plain ``nnx.BatchNorm`` departs from torch: it updates the running variance
with the *biased* batch variance (divided by ``n = N*H*W``), torch with the unbiased one
(``n - 1``), so after a train-mode step the two differ by ``n/(n-1)`` in the new batch's
share. The port uses :class:`jaxnet.nn.TorchBatchNorm` (``nnx.BatchNorm`` with torch's
update); ``parity.compare`` catches the plain one at the first ``running_var`` row.

Weight mapping (:func:`from_torch_state`, numpy only)::

    torch state-dict key                    NNX state path
    conv1.weight         [O, I, 3, 3]       conv1.kernel   [3, 3, I, O]   (OIHW -> HWIO)
    bn1.weight / .bias   [C]                bn1.scale / .bias
    bn1.running_mean     [C]                bn1.mean       (nnx.BatchStat)
    bn1.running_var      [C]                bn1.var        (nnx.BatchStat)
    bn1.num_batches_tracked                 -              (only used by momentum=None)
    layerS.B.{conv1,bn1,conv2,bn2}.*        layerS.B.{conv1,bn1,conv2,bn2}.*
    layerS.0.downsample.0.weight [O,I,1,1]  layerS.0.downsample.0.kernel [1, 1, I, O]
    layerS.0.downsample.1.*                 layerS.0.downsample.1.*
    fc.weight            [classes, C]       fc.kernel      [C, classes]   (transposed)
    fc.bias                                 fc.bias

Example:
    >>> model = ResNet(rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnet.errors import CheckpointError, JaxnetError
from jaxnet.models.state import load_nested
from jaxnet.nn import TorchBatchNorm

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / (O * kh * kw)),
# a plain normal (JAX's "normal"; its "truncated_normal" would cut at two standard deviations).
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
PAD1 = ((1, 1), (1, 1))  # torch's padding=1: one row/column on every side, at any stride


def torch_linear_init(fan_in: int) -> nnx.Initializer:
    """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: torch ``nn.Linear``'s default for weight and bias."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def batch_norm(channels: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``nn.BatchNorm2d(channels)`` in Flax's words: :class:`jaxnet.nn.TorchBatchNorm`, an
    ``nnx.BatchNorm`` (momentum 0.9 = torch's 0.1, eps 1e-5, two-pass variance, statistics in
    ``dtype``) whose running variance takes torch's unbiased batch variance."""
    return TorchBatchNorm(channels, param_dtype=dtype, rngs=rngs)


def conv(cin: int, cout: int, size: int, stride: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free ``size x size`` convolution with torch's symmetric padding ``size // 2``."""
    pad = ((size // 2, size // 2),) * 2
    return nnx.Conv(
        cin, cout, (size, size), strides=stride, padding=pad, use_bias=False,
        kernel_init=KAIMING_FAN_OUT, param_dtype=dtype, rngs=rngs,
    )  # fmt: skip


class BasicBlock(nnx.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` on NHWC maps."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
    ) -> None:
        self.conv1 = conv(inplanes, planes, 3, stride, dtype, rngs)
        self.bn1 = batch_norm(planes, dtype, rngs)
        self.conv2 = conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = batch_norm(planes, dtype, rngs)
        # The projection shortcut (1x1 conv, then BatchNorm) where the shape changes, else none.
        project = stride != 1 or inplanes != planes
        self.downsample = (
            nnx.List([conv(inplanes, planes, 1, stride, dtype, rngs), batch_norm(planes, dtype, rngs)])
            if project
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            projection, norm = self.downsample
            identity = norm(projection(x))
        return jax.nn.relu(out + identity)


class ResNet(nnx.Module):
    """The CIFAR-style ResNet on NHWC images ``[N, 28, 28, 1]``; logits ``[N, num_classes]``.

    Args:
        channels: widths of the three stages (the stem has the first).
        blocks: BasicBlocks per stage (1: ResNet-8, 2: ResNet-14).
        num_classes: outputs of the head.
        in_channels: image channels.
        dtype: parameter (and running-statistics) dtype.
        rngs: the initialisation's keys (torchvision's distributions, JAX's stream).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64),
        blocks: int = 2,
        num_classes: int = 10,
        in_channels: int = 1,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if len(channels) != 3 or blocks < 1:
            raise JaxnetError(
                f"need 3 stage widths and blocks >= 1, got channels={channels}, blocks={blocks}"
            )
        c0, c1, c2 = (int(c) for c in channels)
        self.conv1 = conv(in_channels, c0, 3, 1, dtype, rngs)
        self.bn1 = batch_norm(c0, dtype, rngs)

        def layer(inplanes: int, planes: int, stride: int) -> nnx.List:
            first = BasicBlock(inplanes, planes, stride, dtype=dtype, rngs=rngs)
            return nnx.List(
                [first, *(BasicBlock(planes, planes, dtype=dtype, rngs=rngs) for _ in range(1, blocks))]
            )

        self.layer1 = layer(c0, c0, 1)
        self.layer2 = layer(c0, c1, 2)
        self.layer3 = layer(c1, c2, 2)
        init = torch_linear_init(c2)
        self.fc = nnx.Linear(c2, num_classes, kernel_init=init, bias_init=init, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = block(x)
        return self.fc(jnp.mean(x, axis=(1, 2)))  # global average pool over H, W


# ------------------------------------------------------------------ the weight mapping


def _bn_from_torch(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {
        "scale": state[f"{prefix}.weight"],
        "bias": state[f"{prefix}.bias"],
        "mean": state[f"{prefix}.running_mean"],
        "var": state[f"{prefix}.running_var"],
    }


def _conv_from_torch(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {"kernel": np.transpose(state[f"{prefix}.weight"], (2, 3, 1, 0))}  # OIHW -> HWIO


def from_torch_state(state: dict[str, np.ndarray]) -> dict:
    """torch's ``ResNet.state_dict()`` (as numpy arrays) -> the NNX model's state, as a nested dict.

    Parameters and running statistics both (``nnx.update(model, from_torch_state(sd))`` loads
    them). The block structure is read from the keys; ``num_batches_tracked`` is dropped.

    Raises:
        CheckpointError: a key is missing or left over (naming it).
    """
    state = {k: np.asarray(v) for k, v in state.items()}
    used = {k for k in state if k.endswith("num_batches_tracked")}
    try:
        out: dict = {"conv1": _conv_from_torch(state, "conv1"), "bn1": _bn_from_torch(state, "bn1")}
        for stage in ("layer1", "layer2", "layer3"):
            count = len({k.split(".")[1] for k in state if k.startswith(stage + ".")})
            blocks = {}
            for b in range(count):
                p = f"{stage}.{b}"
                block = {name: _conv_from_torch(state, f"{p}.{name}") for name in ("conv1", "conv2")}
                block |= {name: _bn_from_torch(state, f"{p}.{name}") for name in ("bn1", "bn2")}
                if f"{p}.downsample.0.weight" in state:
                    block["downsample"] = {
                        0: _conv_from_torch(state, f"{p}.downsample.0"),
                        1: _bn_from_torch(state, f"{p}.downsample.1"),
                    }
                blocks[b] = block
            out[stage] = blocks
        out["fc"] = {"kernel": state["fc.weight"].T, "bias": state["fc.bias"]}
    except KeyError as err:
        raise CheckpointError(f"ResNet state dict: missing key {err.args[0]!r}") from None
    used |= set(to_torch_state(out))
    extra = sorted(set(state) - used)
    if extra:
        raise CheckpointError(f"ResNet state dict: unexpected keys {', '.join(extra[:5])}")
    return out


def to_torch_state(tree: dict, num_batches_tracked: int | None = None) -> dict[str, np.ndarray]:
    """The inverse: the NNX state (``nnx.to_pure_dict(nnx.state(model))``) -> torch's keys, as numpy.

    ``num_batches_tracked`` (a count of train-mode forwards that Flax does not keep) is added
    as an int64 scalar per BatchNorm when given, so that ``load_state_dict`` takes the result.
    """
    out: dict[str, np.ndarray] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
                continue
            value = np.asarray(value)
            if key == "kernel":
                out[f"{prefix}weight"] = np.transpose(value, (3, 2, 0, 1) if value.ndim == 4 else (1, 0))
            else:
                out[
                    prefix + {"scale": "weight", "mean": "running_mean", "var": "running_var"}.get(key, key)
                ] = value
            if key == "var" and num_batches_tracked is not None:
                out[f"{prefix}num_batches_tracked"] = np.asarray(num_batches_tracked, np.int64)

    walk(tree, "")
    return out


def load_torch_state(model: ResNet, state: dict[str, np.ndarray]) -> ResNet:
    """Load torch's state dict into ``model`` in place (keys and shapes checked) and return it.

    ``model`` may be abstract (``nnx.eval_shape(lambda: ResNet(...))``): every parameter and
    statistic is replaced, in the dtype of ``state``.
    """
    return load_nested(model, from_torch_state(state), "ResNet")


def decay_mask(params) -> object:
    """Where weight decay applies, as a pytree of bools shaped like ``params`` (an ``nnx.State``
    of parameters, or its pure dict): the conv and Linear kernels; not BatchNorm's scale and bias, not the Linear bias. For ``optax.add_decayed_weights(wd, mask=...)``
    or ``optax.adamw(..., mask=...)``; the same tensors as ``torchref.models.resnet.param_groups``.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf(path) == "kernel", params)


def _leaf(path) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return [n for n in names if n != "value"][-1]


def from_config(fields: dict, *, seed: int = 0, dtype: str = "float32") -> ResNet:
    """The registry's builder: a fresh ResNet of ``ResNetConfig`` fields (torchvision's
    distributions, JAX's RNG stream)."""
    f = fields
    return ResNet(
        f["channels"],
        f["blocks"],
        f["num_classes"],
        f["in_channels"],
        dtype=jnp.dtype(dtype),
        rngs=nnx.Rngs(seed),
    )
