"""Framework-neutral configuration: model sizes and the training recipe.

Plain dataclasses that serialise to JSON (checkpoint metadata) and that both backends read.
The defaults are the PyTorch quickstart tutorial's recipe.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import json
import re
from dataclasses import dataclass, field

from jaxnet import flops
from jaxnet.errors import JaxnetError
from jaxnet.layout import BUILT_IN, Layout

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
PREDICT_CHUNK = 1000  # images per forward in Backend.predict: bounds the CNN's feature maps
SCHEDULES = ("constant", "cosine", "step", "warmup-cosine")
DTYPES = ("float32", "float64")
BACKENDS = ("jax", "torch")
DEVICES = ("auto", "cpu", "cuda")
# A parity worker process costs its imports, its session and its compiles (about 5 CPU-s for
# the MLP); a report of fewer steps than this in all stays in one (jaxnet.parity.pool.auto).
PARITY_WORKER_MIN_STEPS = 200
STACK = "linear_relu_stack"  # the tutorial's attribute name, hence every state-dict key's prefix


@dataclass(frozen=True)
class ModelConfig:
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear`` (the tutorial: 784, 512, 512, 10)."""

    kind = "mlp"
    in_features: int = 784
    hidden: tuple[int, ...] = (512, 512)
    num_classes: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        sizes = (self.in_features, *self.hidden, self.num_classes)
        if any(s < 1 for s in sizes):
            raise JaxnetError(f"layer sizes must be positive, got {sizes}")

    @property
    def linear_shapes(self) -> list[tuple[int, int]]:
        """``(in, out)`` of each Linear layer, in order."""
        sizes = (self.in_features, *self.hidden, self.num_classes)
        return list(itertools.pairwise(sizes))

    def products(self, batch: int) -> list[tuple]:
        """Every matrix product of one training step on ``batch`` images (:mod:`jaxnet.flops`):
        per Linear the forward, the weight gradient and the input gradient (none for the first
        layer: nothing reads the images' gradient)."""
        return [p for i, (a, b) in enumerate(self.linear_shapes) for p in flops.linear(batch, a, b, i > 0)]

    # The one place that knows the module paths: ``linear_relu_stack`` is an ``nn.Sequential``
    # of Linear, ReLU, Linear, ..., Linear, so the Linears sit at the even indices.

    @property
    def linear_names(self) -> list[str]:
        """Module path of each Linear layer: ``linear_relu_stack.0``, ``.2``, ``.4``."""
        return [f"{STACK}.{2 * i}" for i in range(len(self.linear_shapes))]

    @property
    def relu_inputs(self) -> list[str]:
        """The Linear layers whose output feeds a ReLU (all but the last)."""
        return self.linear_names[:-1]

    @property
    def logits_name(self) -> str:
        return self.linear_names[-1]

    @property
    def pool_inputs(self) -> list[str]:
        return []

    loss = "cross_entropy"  # of the logits: nn.CrossEntropyLoss
    layout = BUILT_IN
    buffers = ()  # no running statistics (class attributes, not fields: checkpoints unchanged)
    integer_keys = ()
    trains = False

    @property
    def dropouts(self) -> dict[str, float]:
        return {}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch state-dict names and shapes (weights ``[out, in]``), in torch's order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, (fan_in, fan_out) in zip(self.linear_names, self.linear_shapes, strict=True):
            shapes[f"{name}.weight"] = (fan_out, fan_in)
            shapes[f"{name}.bias"] = (fan_out,)
        return shapes

    @classmethod
    def from_state_dict(cls, state: dict) -> ModelConfig:
        """Read the layer sizes off a torch-layout state dict (e.g. a tutorial ``model.pth``).

        Raises:
            JaxnetError: no ``linear_relu_stack.<i>.weight`` keys, or weights that are not 2-D.
        """
        pattern = re.compile(rf"{STACK}\.(\d+)\.weight")
        indices = sorted({int(m.group(1)) for k in state if (m := pattern.fullmatch(k))})
        if not indices:
            found = ", ".join(list(state)[:4]) or "nothing"
            raise JaxnetError(
                f"no '{STACK}.<i>.weight' keys (found {found}): is this a NeuralNetwork state dict?"
            )
        shapes = [tuple(state[f"{STACK}.{i}.weight"].shape) for i in indices]
        if any(len(s) != 2 for s in shapes):
            raise JaxnetError(f"weights must be 2-D [out, in], found shapes {shapes}")
        return cls(shapes[0][1], tuple(s[0] for s in shapes[:-1]), shapes[-1][0])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class CNNConfig:
    """The CNN of PyTorch's ``examples/mnist``: ``conv1 -> ReLU -> conv2 -> ReLU -> max-pool 2
    -> dropout -> flatten -> fc1 -> ReLU -> dropout -> fc2 -> log_softmax``, on 28x28 images.

    Its module paths (the state-dict keys) are the example's: ``conv1``, ``conv2``, ``fc1``,
    ``fc2``; the dropout rates are ``dropout1`` and ``dropout2``.
    """

    kind = "cnn"
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    num_classes: int = 10
    dropout1: float = 0.25
    dropout2: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not (0 <= self.dropout1 < 1 and 0 <= self.dropout2 < 1):
            raise JaxnetError(f"dropout rates must be in [0, 1), got {self.dropout1}, {self.dropout2}")

    @property
    def flat_features(self) -> int:
        """conv2's output after the 2x2 max-pool, flattened: ``channels[1] * 12 * 12``."""
        return self.channels[1] * 12 * 12

    def products(self, batch: int) -> list[tuple]:
        """Every matrix product of one training step on ``batch`` images (:mod:`jaxnet.flops`):
        3x3 valid convs 28 -> 26 -> 24 (the first without an input gradient), then the two
        Linears after the 2x2 pool."""
        (c1, c2), out = self.channels, []
        out += flops.conv(batch, 1, 28, c1, 3, input_grad=False) + flops.conv(batch, c1, 26, c2, 3)
        return (
            out
            + flops.linear(batch, self.flat_features, self.hidden)
            + flops.linear(batch, self.hidden, self.num_classes)
        )

    @property
    def relu_inputs(self) -> list[str]:
        """The outputs a ReLU follows."""
        return ["conv1", "conv2", "fc1"]

    @property
    def pool_inputs(self) -> list[str]:
        """What a 2x2 max-pool reads: conv2's output after its ReLU."""
        return ["relu2"]

    @property
    def logits_name(self) -> str:
        return "fc2"

    loss = "nll"  # of the log-probabilities: F.nll_loss
    layout = BUILT_IN
    buffers = ()  # no running statistics (class attributes, not fields: checkpoints unchanged)
    integer_keys = ()
    trains = False

    @property
    def dropouts(self) -> dict[str, float]:
        """``{name: p}`` of the dropouts, active in training, off (eval mode) in parity steps."""
        return {"dropout1": self.dropout1, "dropout2": self.dropout2}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c1, c2 = self.channels
        return {
            "conv1.weight": (c1, 1, 3, 3),
            "conv1.bias": (c1,),
            "conv2.weight": (c2, c1, 3, 3),
            "conv2.bias": (c2,),
            "fc1.weight": (self.hidden, self.flat_features),
            "fc1.bias": (self.hidden,),
            "fc2.weight": (self.num_classes, self.hidden),
            "fc2.bias": (self.num_classes,),
        }

    def to_json(self) -> str:
        return json.dumps({"kind": "cnn", **dataclasses.asdict(self)})

    @classmethod
    def from_state_dict(cls, state: dict) -> CNNConfig:
        """The sizes of an ``examples/mnist`` state dict (``conv1``, ``conv2``, ``fc1``, ``fc2``)."""
        shapes = [tuple(state[f"{k}.weight"].shape) for k in ("conv1", "conv2", "fc1", "fc2")]
        return cls(channels=(shapes[0][0], shapes[1][0]), hidden=shapes[2][0], num_classes=shapes[3][0])


@dataclass(frozen=True)
class PortConfig:
    """A user's PyTorch module and its Flax NNX port, described for the parity engine (built by
    :func:`jaxnet.parity.compare` from the torch module and its arguments).

    Attributes:
        shapes: the torch module's parameters, ``{state-dict key: shape}``.
        loss: ``"cross_entropy"`` of logits or ``"nll"`` of log-probabilities.
        relu_inputs: activations a ReLU reads (where ties between the sides are looked for).
        pool_inputs: activations a 2x2 max-pool reads.
        dropouts: ``{torch path: p}`` of the ``nn.Dropout`` modules.
        layout: how the port's names and arrays map onto torch's (:mod:`jaxnet.layout`).
    """

    kind = "port"
    shapes: dict[str, tuple[int, ...]]
    loss: object = "cross_entropy"  # a name of PORT_LOSSES, or a (torch_fn, jax_fn) pair
    relu_inputs: tuple[str, ...] = ()
    pool_inputs: tuple[str, ...] = ()
    dropouts: dict[str, float] = field(default_factory=dict)
    layout: Layout = BUILT_IN
    buffers: tuple[str, ...] = ()  # state-dict keys that are running statistics, not parameters
    integer_keys: tuple[str, ...] = ()  # buffers of an integer dtype (num_batches_tracked)
    trains: bool = False  # steps run in train mode (the model has BatchNorm)
    ignore_index: int = -100  # targets with this value count in no loss (sequence padding)
    logits_name: str = (
        "output"  # the torch module whose output is the logits (the extreme-logit probe scales it)
    )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)


PORT_LOSSES = ("cross_entropy", "nll", "mse")  # compare's built-in losses; or a (torch, jax) pair


AnyModel = ModelConfig | CNNConfig | PortConfig  # what a model config may be; ``.kind`` says which


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer recipe, meaning the same update rule in torch.optim and optax.

    ``weight_decay=None`` takes torch's default for the optimizer (0 for sgd, adam and
    adadelta, 1e-2 for adamw; optax's adamw default of 1e-4 is never used implicitly), and
    ``eps=None`` too (1e-8 for adam and adamw, 1e-6 for adadelta).
    ``schedule`` is applied per step: ``cosine`` decays to 0 over ``total_steps``; ``step``
    multiplies by ``gamma`` every ``step_size`` steps (0: ``total_steps // 3``).
    ``total_steps`` is filled in by the training run from the data size, batch size and
    epochs. ``rho`` is Adadelta's decay of its running averages.

    The pieces a port's recipe adds (their defaults leave a recipe as it was):

    - ``clip_norm > 0``: torch's ``clip_grad_norm_(model.parameters(), clip_norm)`` between
      ``backward()`` and ``step()``: every gradient times
      ``min(clip_norm / (total_norm + 1e-6), 1)``, ``total_norm`` the 2-norm of all of them
      together, before weight decay or momentum see them.
    - ``schedule="warmup-cosine"`` with ``warmup_steps = W``: ``LambdaLR`` with the factor
      of Hugging Face's ``get_cosine_schedule_with_warmup``: ``t / W`` for ``t < W``, then
      ``0.5 (1 + cos(pi (t - W) / (T - W)))`` down to 0 at ``T = total_steps``.
    - ``no_decay``: torch state-dict key patterns (``fnmatch``, case-sensitive: ``"*.bias"``,
      ``"*bn*"``, ``"*ln_*"``, ``"*wte.*"``) of the parameters that get no weight decay: a
      second torch parameter group with ``weight_decay=0``, an optax mask on the JAX side.
      A pattern may match nothing (a recipe is a policy for many models); ``jaxnet train``
      refuses one that matches nothing in its model.

    Example:
        >>> OptimConfig(name="adamw", lr=6e-4, weight_decay=0.1, clip_norm=1.0,
        ...             schedule="warmup-cosine", warmup_steps=100, no_decay=("*.bias",))
    """

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None
    schedule: str = "constant"
    total_steps: int = 0
    gamma: float = 0.1
    step_size: int = 0
    rho: float = 0.9
    clip_norm: float = 0.0
    warmup_steps: int = 0
    no_decay: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise JaxnetError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise JaxnetError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.lr > 0:
            raise JaxnetError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise JaxnetError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise JaxnetError("nesterov needs --optimizer sgd and a non-zero --momentum")
        if self.momentum and self.name != "sgd":
            raise JaxnetError("--momentum applies to sgd only (adam uses betas)")
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", 1e-2 if self.name == "adamw" else 0.0)
        if self.eps is None:  # torch's defaults: Adam's 1e-8, Adadelta's 1e-6
            object.__setattr__(self, "eps", 1e-6 if self.name == "adadelta" else 1e-8)
        if self.step_size < 0:
            raise JaxnetError(f"step size must be >= 0, got {self.step_size}")
        if not 0 < self.gamma <= 1:
            raise JaxnetError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.weight_decay < 0:
            raise JaxnetError(f"weight decay must be >= 0, got {self.weight_decay}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.clip_norm >= 0 or self.clip_norm == float("inf"):
            raise JaxnetError(f"clip norm must be finite and >= 0 (0: no clipping), got {self.clip_norm}")
        if self.warmup_steps < 0:
            raise JaxnetError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
        if self.warmup_steps and self.schedule != "warmup-cosine":
            raise JaxnetError("warm-up steps need the warmup-cosine schedule")
        if isinstance(self.no_decay, str) or not all(isinstance(p, str) and p for p in self.no_decay):
            raise JaxnetError(f"no_decay must be a sequence of name patterns, got {self.no_decay!r}")
        object.__setattr__(self, "no_decay", tuple(self.no_decay))  # hashable (a cache key)

    def decays(self, name: str) -> bool:
        """Whether the parameter torch calls ``name`` gets weight decay (no ``no_decay`` pattern
        matches it)."""
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.no_decay)

    def unmatched(self, names: list[str]) -> list[str]:
        """The ``no_decay`` patterns that match none of ``names`` (a typo, or another model's)."""
        return [p for p in self.no_decay if not any(fnmatch.fnmatchcase(n, p) for n in names)]

    @property
    def step_every(self) -> int:
        """Steps between decays of the ``step`` schedule."""
        return self.step_size or max(1, self.total_steps // 3)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Per-parameter optimizer state, in torch's words."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        if self.name == "adadelta":
            return ("square_avg", "acc_delta")
        return ("exp_avg", "exp_avg_sq")


# OptimConfig fields a port's recipes added, and the defaults at which they are left out of
# a checkpoint's JSON (which then reads back as before: missing fields take the defaults).
ADDED_OPTIM_FIELDS: dict[str, object] = {"clip_norm": 0.0, "warmup_steps": 0, "no_decay": ()}
ADDED_TRAIN_FIELDS: dict[str, object] = {"epoch_steps": 0}  # left out at the default, likewise
_TRAIN_FLAGS = ("batch_size", "epochs", "seed", "shuffle", "dtype", "train_limit", "epoch_steps")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    shuffle: bool = True
    dtype: str = "float32"
    train_limit: int = 0  # use only the first N training images (0: all 60,000)
    epoch_steps: int = 0  # steps an epoch has on a stream of text (0: an epoch is one pass over the images)

    def __post_init__(self) -> None:
        if self.train_limit < 0:
            raise JaxnetError(f"train limit must be >= 0, got {self.train_limit}")
        if self.batch_size < 1:
            raise JaxnetError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise JaxnetError(f"epochs must be >= 1, got {self.epochs}")
        if self.dtype not in DTYPES:
            raise JaxnetError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.epoch_steps < 0:
            raise JaxnetError(f"epoch steps must be >= 0, got {self.epoch_steps}")

    def to_json(self) -> str:
        """The recipe as JSON; optimizer fields added since format 2 are left out at their
        defaults, so an older recipe's checkpoint is byte for byte what it was."""
        raw = dataclasses.asdict(self)
        for name, default in ADDED_OPTIM_FIELDS.items():
            if raw["optimizer"][name] == default:
                del raw["optimizer"][name]
        for name, default in ADDED_TRAIN_FIELDS.items():
            if raw[name] == default:
                del raw[name]
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        raw = json.loads(text)
        return cls(**{**raw, "optimizer": OptimConfig(**raw["optimizer"])})

    def flat(self) -> dict[str, object]:
        """The recipe as the flat ``{flag name: value}`` the command line speaks (see FLAGS)."""
        opt = self.optimizer
        values = {f: getattr(opt, f) for f in OPTIM_FLAGS}
        values["optimizer"] = opt.name
        values |= {f: getattr(self, f) for f in _TRAIN_FLAGS}
        return values

    @classmethod
    def from_flat(cls, values: dict[str, object], base: OptimConfig | None = None) -> TrainConfig:
        """Inverse of :meth:`flat`; missing names take :data:`FLAGS`' defaults. The optimizer's
        fields that are no flag (``betas``, ``eps``, ``rho``) come from ``base`` (a family's
        recipe, a resumed run's), else their defaults.

        Raises:
            JaxnetError: a value is invalid (the message names it).
        """
        v = {**FLAGS, **values}
        kept = {}
        if base is not None and base.name == v["optimizer"]:
            kept = {f: getattr(base, f) for f in ("betas", "eps", "rho")}
        optim = OptimConfig(name=v["optimizer"], **{f: v[f] for f in OPTIM_FLAGS}, **kept)
        return cls(optimizer=optim, **{f: v[f] for f in _TRAIN_FLAGS})


# The recipe in flat form with the tutorial's values: the one mapping between ``jaxnet train``
# flags (``--weight-decay`` is ``weight_decay``) and TrainConfig. weight_decay None means
# torch's default for the optimizer.
FLAGS: dict[str, object] = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": None,
    "schedule": "constant",
    "gamma": 0.1,
    "step_size": 0,
    "clip_norm": 0.0,
    "warmup_steps": 0,
    "no_decay": (),
    "batch_size": 64,
    "epochs": 10,
    "seed": 0,
    "shuffle": True,
    "dtype": "float32",
    "train_limit": 0,
    "epoch_steps": 0,
}

OPTIM_FLAGS = (
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "gamma",
    "step_size",
    "clip_norm",
    "warmup_steps",
    "no_decay",
)

# The CNN's defaults where they differ from the tutorial's: PyTorch's examples/mnist (Adadelta
# lr 1.0, StepLR gamma 0.7 after every epoch, 14 epochs); ``jaxnet train --model cnn`` sets
# ``step_size`` to one epoch's steps unless given.
CNN_FLAGS: dict[str, object] = {
    "optimizer": "adadelta",
    "lr": 1.0,
    "schedule": "step",
    "gamma": 0.7,
    "epochs": 14,
}

# Named optimizer recipes the parity report, the tests and the examples run (``total_steps``
# is set per run). Between them they exercise every branch of the optimizer translation:
# coupled and decoupled weight decay, momentum with Nesterov, both schedules.
RECIPES = {
    "sgd": OptimConfig(),
    "sgd-nesterov-wd-step": OptimConfig(
        name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step"
    ),
    "adam-l2": OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4),
    "adamw-cosine": OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-2, schedule="cosine"),
}

# The CNN's recipe, PyTorch's examples/mnist: Adadelta (lr 1.0), StepLR gamma 0.7 every epoch
# (``step_size`` is set to the steps per epoch by the run).
CNN_RECIPE = OptimConfig(name="adadelta", lr=1.0, rho=0.9, eps=1e-6, schedule="step", gamma=0.7)
CNN_RECIPES = {"adadelta-step": CNN_RECIPE}  # the parity report's recipes for the CNN
ALL_RECIPES = {**RECIPES, **CNN_RECIPES}  # any runs on either model

# Recipes of the models people port (the ResNet and the GPT of the port issues), kept out of
# RECIPES so that the default parity report runs what it did. ``total_steps`` is set per run.
# Parameter names are torchvision's ResNet (``bn1``, ``layer1.0.bn2``, and the BatchNorm of a
# shortcut, ``layer2.0.downsample.1``) and nanoGPT's (``transformer.wte``, ``.wpe``,
# ``transformer.h.0.ln_1``, ``transformer.ln_f``); on other models the patterns that match
# nothing do nothing.
PORT_RECIPES = {
    # torchvision's CIFAR-style recipe: SGD momentum 0.9 Nesterov, wd 5e-4 on weights only
    # (none on BatchNorm or biases), cosine to 0 over the run
    "sgd-nesterov-masked-cosine": OptimConfig(
        name="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        no_decay=("*.bias", "*bn*", "*.downsample.1.*"),
    ),
    # nanoGPT's: AdamW betas (0.9, 0.95), wd 0.1 off LayerNorm, biases and embeddings, global
    # gradient norm clipped at 1.0, linear warm-up then cosine
    "adamw-warmup-cosine-clip": OptimConfig(
        name="adamw",
        lr=6e-4,
        betas=(0.9, 0.95),
        weight_decay=0.1,
        schedule="warmup-cosine",
        warmup_steps=5,
        clip_norm=1.0,
        no_decay=("*.bias", "*ln_*", "*wte.*", "*wpe.*"),
    ),
}
