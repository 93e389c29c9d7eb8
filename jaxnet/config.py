"""Framework-neutral configuration: model sizes and the training recipe.

Plain dataclasses that serialise to JSON (checkpoint metadata) and that both backends read.
The defaults are the PyTorch quickstart tutorial's recipe.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field

from jaxnet.errors import JaxnetError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = ("float32", "float64")
BACKENDS = ("jax", "torch")
DEVICES = ("auto", "cpu", "cuda")
STACK = "linear_relu_stack"  # the tutorial's attribute name, hence every state-dict key's prefix


@dataclass(frozen=True)
class ModelConfig:
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear`` (the tutorial: 784, 512, 512, 10)."""

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
class OptimConfig:
    """One optimizer recipe, meaning the same update rule in torch.optim and optax.

    ``weight_decay=None`` takes torch's default for the optimizer (0 for sgd and adam, 1e-2
    for adamw; optax's adamw default of 1e-4 is never used implicitly). ``schedule`` is
    applied per step: ``cosine`` decays to 0 over ``total_steps``; ``step`` multiplies by
    ``gamma`` every ``total_steps // 3`` steps. ``total_steps`` is filled in by the training
    run from the data size, batch size and epochs.
    """

    name: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"
    total_steps: int = 0
    gamma: float = 0.1

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
        if self.weight_decay < 0:
            raise JaxnetError(f"weight decay must be >= 0, got {self.weight_decay}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def step_every(self) -> int:
        """Steps between decays of the ``step`` schedule."""
        return max(1, self.total_steps // 3)

    @property
    def state_names(self) -> tuple[str, ...]:
        """Per-parameter optimizer state, in torch's words."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    epochs: int = 10
    seed: int = 0
    shuffle: bool = True
    dtype: str = "float32"
    train_limit: int = 0  # use only the first N training images (0: all 60,000)

    def __post_init__(self) -> None:
        if self.train_limit < 0:
            raise JaxnetError(f"train limit must be >= 0, got {self.train_limit}")
        if self.batch_size < 1:
            raise JaxnetError(f"batch size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise JaxnetError(f"epochs must be >= 1, got {self.epochs}")
        if self.dtype not in DTYPES:
            raise JaxnetError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        raw = json.loads(text)
        return cls(**{**raw, "optimizer": OptimConfig(**raw["optimizer"])})

    def flat(self) -> dict[str, object]:
        """The recipe as the flat ``{flag name: value}`` the command line speaks (see FLAGS)."""
        opt = self.optimizer
        values = {f: getattr(opt, f) for f in ("lr", "momentum", "nesterov", "weight_decay", "schedule")}
        values["optimizer"] = opt.name
        values |= {
            f: getattr(self, f) for f in ("batch_size", "epochs", "seed", "shuffle", "dtype", "train_limit")
        }
        return values

    @classmethod
    def from_flat(cls, values: dict[str, object]) -> TrainConfig:
        """Inverse of :meth:`flat`; missing names take :data:`FLAGS`' defaults.

        Raises:
            JaxnetError: a value is invalid (the message names it).
        """
        v = {**FLAGS, **values}
        optim = OptimConfig(
            name=v["optimizer"],
            lr=v["lr"],
            momentum=v["momentum"],
            nesterov=v["nesterov"],
            weight_decay=v["weight_decay"],
            schedule=v["schedule"],
        )
        rest = {f: v[f] for f in ("batch_size", "epochs", "seed", "shuffle", "dtype", "train_limit")}
        return cls(optimizer=optim, **rest)


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
    "batch_size": 64,
    "epochs": 10,
    "seed": 0,
    "shuffle": True,
    "dtype": "float32",
    "train_limit": 0,
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
