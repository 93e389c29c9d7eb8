"""The ported families' configurations, framework-neutral: the ResNet's and the GPT's names,
shapes, layout and initial weights (numpy only), as :class:`jaxnet.config.ModelConfig` is the MLP's.

Each config answers what the rest of jaxnet asks of a model without building it: its torch
state-dict keys and shapes (``param_shapes``: checkpoints are validated without a framework),
the kind of every torch module that holds state (``modules``, whose rules in
:mod:`jaxnet.rules` carry weights between the layouts), its loss, its running statistics
(``buffers``, ``integer_keys``), its dropouts and the outputs a ReLU reads. They have the
attributes of :class:`jaxnet.config.PortConfig`, so the port backends that ``parity.compare``
drives train them too. :data:`jaxnet.registry.FAMILIES` names them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from jaxnet import flops
from jaxnet.errors import JaxnetError
from jaxnet.rules import RULES, PortLayout


class _Family:
    """What the two families share: the PortConfig attributes derived from ``modules``."""

    loss = "cross_entropy"
    ignore_index = -100
    relu_inputs: tuple[str, ...] = ()
    pool_inputs: tuple[str, ...] = ()

    def modules(self) -> dict[str, str]:  # pragma: no cover - each family's own
        raise NotImplementedError

    def param_shapes(self) -> dict[str, tuple[int, ...]]:  # pragma: no cover - each family's own
        raise NotImplementedError

    @cached_property
    def layout(self) -> PortLayout:
        """Weights move by the rule of each torch module's kind (:mod:`jaxnet.rules`)."""
        kinds = self.modules()
        return PortLayout(
            channels_last=self.channels_last,
            sequential=frozenset(),
            kinds=kinds,
            rules={path: RULES[kind] for path, kind in kinds.items()},
        )

    @property
    def buffers(self) -> tuple[str, ...]:
        return tuple(k for k in self.param_shapes() if k.rsplit(".", 1)[-1] in _BUFFERS)

    @property
    def integer_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.param_shapes() if k.endswith(".num_batches_tracked"))

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **dataclasses.asdict(self)})


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
STAGES = ("layer1", "layer2", "layer3")


@dataclass(frozen=True)
class ResNetConfig(_Family):
    """torchvision's BasicBlock ResNet, CIFAR-style (``torchref.models.resnet``): three stages of
    ``blocks`` blocks at ``channels`` widths, on ``in_channels x 28 x 28`` images."""

    kind = "resnet"
    channels_last = True  # the NNX port is NHWC
    trains = True  # BatchNorm: steps in train mode
    logits_name = "fc"
    channels: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 2
    num_classes: int = 10
    in_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != 3 or min(self.channels) < 1 or self.blocks < 1 or self.num_classes < 1:
            raise JaxnetError(
                f"the ResNet needs 3 positive stage widths and blocks >= 1, got channels={self.channels}, "
                f"blocks={self.blocks}"
            )

    def block_paths(self) -> list[tuple[str, int, int, int]]:
        """``(path, in, out, stride)`` of every BasicBlock, in order."""
        out, inplanes = [], self.channels[0]
        for s, (stage, planes) in enumerate(zip(STAGES, self.channels, strict=True)):
            for b in range(self.blocks):
                stride = 2 if s > 0 and b == 0 else 1
                out.append((f"{stage}.{b}", inplanes, planes, stride))
                inplanes = planes
        return out

    def products(self, batch: int, size: int = 28) -> list[tuple]:
        """Every matrix product of one training step on ``batch`` images of ``size x size``
        (:mod:`jaxnet.flops`): the stem (no input gradient), each block's two 3x3 convs and
        its 1x1 projection, the head."""
        out = flops.conv(batch, self.in_channels, size, self.channels[0], 3, pad=1, input_grad=False)
        for _, cin, cout, stride in self.block_paths():
            out += flops.conv(batch, cin, size, cout, 3, stride, pad=1)
            if stride != 1 or cin != cout:
                out += flops.conv(batch, cin, size, cout, 1, stride)
            size = (size - 1) // stride + 1
            out += flops.conv(batch, cout, size, cout, 3, pad=1)
        return out + flops.linear(batch, self.channels[2], self.num_classes)

    def modules(self) -> dict[str, str]:
        kinds = {"conv1": "conv", "bn1": "batchnorm"}
        for path, cin, cout, stride in self.block_paths():
            kinds |= {f"{path}.conv1": "conv", f"{path}.bn1": "batchnorm"}
            kinds |= {f"{path}.conv2": "conv", f"{path}.bn2": "batchnorm"}
            if stride != 1 or cin != cout:
                kinds |= {f"{path}.downsample.0": "conv", f"{path}.downsample.1": "batchnorm"}
        return kinds | {"fc": "linear"}

    @property
    def relu_inputs(self) -> tuple[str, ...]:
        """The BatchNorms a ReLU reads directly (the stem's, each block's first)."""
        return ("bn1", *(f"{p}.bn1" for p, *_ in self.block_paths()))

    @property
    def dropouts(self) -> dict[str, float]:
        return {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch's state-dict keys and shapes, in its order (``num_batches_tracked`` is ``()``)."""
        shapes: dict[str, tuple[int, ...]] = {}

        def conv(path: str, cin: int, cout: int, k: int) -> None:
            shapes[f"{path}.weight"] = (cout, cin, k, k)

        def bn(path: str, c: int) -> None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{path}.{name}"] = (c,)
            shapes[f"{path}.num_batches_tracked"] = ()

        conv("conv1", self.in_channels, self.channels[0], 3)
        bn("bn1", self.channels[0])
        for path, cin, cout, stride in self.block_paths():
            conv(f"{path}.conv1", cin, cout, 3)
            bn(f"{path}.bn1", cout)
            conv(f"{path}.conv2", cout, cout, 3)
            bn(f"{path}.bn2", cout)
            if stride != 1 or cin != cout:
                conv(f"{path}.downsample.0", cin, cout, 1)
                bn(f"{path}.downsample.1", cout)
        shapes["fc.weight"] = (self.num_classes, self.channels[2])
        shapes["fc.bias"] = (self.num_classes,)
        return shapes

    def initial_state(self, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
        """torchvision's initialisation drawn with numpy from ``seed`` (the same in both
        backends): convs ``N(0, 2 / fan_out)``, BatchNorm weight 1 and bias 0, running
        statistics 0 and 1, the Linear ``U(+-1/sqrt(fan_in))``."""
        rng = np.random.default_rng(seed)
        state = {}
        for key, shape in self.param_shapes().items():
            leaf = key.rsplit(".", 1)[-1]
            if key == "fc.weight" or key == "fc.bias":
                value = rng.uniform(-1, 1, size=shape) / math.sqrt(self.channels[2])
            elif len(shape) == 4:
                value = rng.normal(0.0, math.sqrt(2.0 / (shape[0] * shape[2] * shape[3])), size=shape)
            elif leaf == "num_batches_tracked":
                state[key] = np.asarray(0, np.int64)
                continue
            else:
                value = np.full(shape, 1.0 if leaf in ("weight", "running_var") else 0.0)
            state[key] = value.astype(dtype)
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> ResNetConfig:
        """The sizes of a ResNet state dict (torchvision's keys)."""
        blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
        widths = tuple(int(np.shape(state[f"{s}.0.conv1.weight"])[0]) for s in STAGES)
        return cls(
            widths, blocks, int(np.shape(state["fc.weight"])[0]), int(np.shape(state["conv1.weight"])[1])
        )


@dataclass(frozen=True)
class GPTConfig(_Family):
    """nanoGPT's configuration (the fields of ``torchref.models.gpt.GPTConfig``): a character
    model on the fortunes corpus (``vocab_size`` its characters)."""

    kind = "gpt"
    channels_last = False
    trains = False  # no BatchNorm; dropout is drawn in training by each framework
    logits_name = "lm_head"
    vocab_size: int = 96
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd)
        if min(sizes) < 1 or self.n_embd % self.n_head:
            raise JaxnetError(
                f"GPT sizes must be positive and n_embd a multiple of n_head, got {dataclasses.asdict(self)}"
            )
        if not 0 <= self.dropout < 1:
            raise JaxnetError(f"dropout must be in [0, 1), got {self.dropout}")

    def products(self, batch: int) -> list[tuple]:
        """Every matrix product of one training step on ``batch`` windows of ``block_size``
        characters (:mod:`jaxnet.flops`): per block the packed q/k/v projection, the per-head
        scores and values, the output projection and the MLP's two Linears; then the tied head.
        The embeddings are lookups, no products."""
        rows, e, t = batch * self.block_size, self.n_embd, self.block_size
        block = flops.linear(rows, e, 3 * e) + flops.attention(batch, self.n_head, t, e // self.n_head)
        block += flops.linear(rows, e, e) + flops.linear(rows, e, 4 * e) + flops.linear(rows, 4 * e, e)
        return block * self.n_layer + flops.linear(rows, e, self.vocab_size)

    def modules(self) -> dict[str, str]:
        kinds = {"wte": "embedding", "wpe": "embedding"}
        for i in range(self.n_layer):
            p = f"h.{i}"
            kinds |= {f"{p}.ln_1": "layernorm", f"{p}.attn": "mha", f"{p}.ln_2": "layernorm"}
            kinds |= {f"{p}.mlp.c_fc": "linear", f"{p}.mlp.c_proj": "linear"}
        return kinds | {"ln_f": "layernorm", "lm_head": "linear"}

    @property
    def dropouts(self) -> dict[str, float]:
        """``{torch path: p}`` of the ``nn.Dropout`` modules (the embeddings', each block's two)."""
        sites = ["drop"]
        for i in range(self.n_layer):
            sites += [f"h.{i}.resid_dropout", f"h.{i}.mlp.dropout"]
        return dict.fromkeys(sites, float(self.dropout))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch's state-dict keys and shapes; the tied ``lm_head.weight`` is ``wte.weight`` (once)."""
        e, shapes = self.n_embd, {}
        shapes["wte.weight"] = (self.vocab_size, e)
        shapes["wpe.weight"] = (self.block_size, e)
        for i in range(self.n_layer):
            p = f"h.{i}"
            shapes |= {f"{p}.ln_1.weight": (e,), f"{p}.ln_1.bias": (e,)}
            shapes |= {f"{p}.attn.in_proj_weight": (3 * e, e), f"{p}.attn.in_proj_bias": (3 * e,)}
            shapes |= {f"{p}.attn.out_proj.weight": (e, e), f"{p}.attn.out_proj.bias": (e,)}
            shapes |= {f"{p}.ln_2.weight": (e,), f"{p}.ln_2.bias": (e,)}
            shapes |= {f"{p}.mlp.c_fc.weight": (4 * e, e), f"{p}.mlp.c_fc.bias": (4 * e,)}
            shapes |= {f"{p}.mlp.c_proj.weight": (e, 4 * e), f"{p}.mlp.c_proj.bias": (e,)}
        return shapes | {"ln_f.weight": (e,), "ln_f.bias": (e,)}

    def initial_state(self, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
        """nanoGPT's initialisation drawn with numpy from ``seed``: ``N(0, 0.02)`` for the
        Linear and Embedding weights, ``N(0, 0.02 / sqrt(2 n_layer))`` for the projections
        into the residual stream, ``nn.MultiheadAttention``'s xavier-uniform packed projection,
        zero biases, LayerNorm weight 1."""
        rng = np.random.default_rng(seed)
        residual = 0.02 / math.sqrt(2 * self.n_layer)
        state = {}
        for key, shape in self.param_shapes().items():
            if key.endswith("in_proj_weight"):
                bound = math.sqrt(6.0 / (shape[0] + shape[1]))
                value = rng.uniform(-bound, bound, size=shape)
            elif key.endswith(("c_proj.weight", "out_proj.weight")):
                value = rng.normal(0.0, residual, size=shape)
            elif len(shape) == 2:
                value = rng.normal(0.0, 0.02, size=shape)
            elif ".ln_" in f".{key}" and key.endswith(".weight"):
                value = np.ones(shape)
            else:
                value = np.zeros(shape)
            state[key] = value.astype(dtype)
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> GPTConfig:
        """The sizes of a GPT state dict; ``n_head`` is not in it: the default (4), or 1 when
        that does not divide ``n_embd``."""
        vocab, e = (int(d) for d in np.shape(state["wte.weight"]))
        n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
        head = cls.n_head if e % cls.n_head == 0 else 1
        return cls(vocab, int(np.shape(state["wpe.weight"])[0]), n_layer, head, e)
