"""Framework-neutral configuration: model sizes and the training recipe.

Plain dataclasses that serialise to JSON (checkpoint metadata) and that both backends read.
The defaults are the PyTorch quickstart tutorial's recipe.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field

from jaxnet.errors import JaxnetError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
DTYPES = ("float32", "float64")
BACKENDS = ("jax", "torch")
DEVICES = ("auto", "cpu", "cuda")


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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Torch state-dict names and shapes (weights ``[out, in]``), in torch's order."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (fan_in, fan_out) in enumerate(self.linear_shapes):
            shapes[f"linear_relu_stack.{2 * i}.weight"] = (fan_out, fan_in)
            shapes[f"linear_relu_stack.{2 * i}.bias"] = (fan_out,)
        return shapes

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


# Named optimizer recipes the parity report and tests run (``total_steps`` set per run).
RECIPES = {
    "sgd": OptimConfig(),
    "sgd-momentum-nesterov-wd": OptimConfig(
        name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "adam": OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4),
    "adamw-cosine": OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-2, schedule="cosine"),
}
