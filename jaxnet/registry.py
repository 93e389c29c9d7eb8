"""The model families, each declared in one place (framework-neutral: imports no framework).

A family is a model written twice, ``torchref/models/<name>.py`` and
``jaxnet/models/<name>.py`` (mirrored by name), and one :class:`Family` line below saying what
the rest of jaxnet needs to know of it: its config class (names, shapes, layout, loss,
dropouts, the outputs a ReLU reads: ``jaxnet.config`` / ``jaxnet.families``), its default
recipe, its data, how to build each side and which engine runs it. A fifth family is one
file per side, its config class, and one line in :data:`FAMILIES`.

Each side's file defines ``from_config(fields, ...)``: torch's takes ``(fields, dtype)`` and
builds from torch's global RNG, the JAX side's ``(fields, *, seed, dtype)``; ``fields`` is
``dataclasses.asdict(config)``. Those files are imported only when a side is asked for.

Example:
    >>> family("resnet").config().param_shapes()["conv1.weight"]
    (16, 1, 3, 3)
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass, field

from jaxnet.config import CNN_FLAGS, CNN_RECIPES, PORT_RECIPES, RECIPES, CNNConfig, ModelConfig
from jaxnet.errors import CheckpointError, JaxnetError
from jaxnet.families import GPTConfig, ResNetConfig

IMAGES, TEXT = "fashion-mnist", "fortunes"  # the two data sets a family trains on
EPOCH = "epoch"  # a ``step_size`` flag default: one epoch's steps (examples/mnist's StepLR)


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: ``--model NAME``; also the config's ``kind`` and the files' name.
        config: its config class (framework-neutral, serialised into checkpoints).
        summary: one line for ``-h``.
        data: :data:`IMAGES` (Fashion-MNIST) or :data:`TEXT` (the fortunes corpus).
        flags: ``jaxnet train`` flag defaults where they differ from ``config.FLAGS``.
        recipes: named optimizer recipes (the parity report's; the first is the default).
        engine: ``"builtin"``: ``backends.jax`` / ``backends.torch`` (the tutorial's loops,
            masks by name); ``"port"``: ``backends.jax_port`` / ``backends.torch_port``, the
            engine ``parity.compare`` drives (any pair, BatchNorm state, pytree inputs).
        scan: the JAX built-in backend runs its steps as one ``lax.scan`` (the MLP; XLA's CPU
            convolutions ran 7x slower in a loop).
        augment: ``"crop-flip"``: :mod:`jaxnet.augment` on every training batch, drawn from
            ``(seed, step)``; ``""``: none.
        signature: state-dict keys that identify a plain state dict as this family's.
        shorthand: config fields with a ``jaxnet train`` flag of their own (``--hidden``).
    """

    name: str
    config: type
    summary: str
    data: str = IMAGES
    flags: dict[str, object] = field(default_factory=dict)
    recipes: dict = field(default_factory=dict)
    engine: str = "builtin"
    scan: bool = False
    augment: str = ""
    signature: tuple[str, ...] = ()
    shorthand: tuple[str, ...] = ()

    def module(self, side: str):
        """The family's file on ``side`` (``"jax"`` or ``"torch"``), imported now."""
        package = "jaxnet.models" if side == "jax" else "torchref.models"
        return importlib.import_module(f"{package}.{self.name}")


_RESNET_RECIPE = PORT_RECIPES["sgd-nesterov-masked-cosine"]
_GPT_RECIPE = dataclasses.replace(PORT_RECIPES["adamw-warmup-cosine-clip"], lr=1e-3, warmup_steps=100)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("mlp", ModelConfig, "the PyTorch quickstart tutorial's MLP", recipes=RECIPES, scan=True,
               signature=("linear_relu_stack.0.weight",), shorthand=("hidden",)),
        Family("cnn", CNNConfig, "PyTorch examples/mnist's CNN (dropout)", flags=CNN_FLAGS | {"step_size": EPOCH},
               recipes=CNN_RECIPES,
               signature=("conv1.weight", "fc2.weight")),
        Family("resnet", ResNetConfig, "torchvision's BasicBlock ResNet, CIFAR-style (BatchNorm)",
               flags={"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                      "schedule": "cosine", "no_decay": _RESNET_RECIPE.no_decay, "batch_size": 128, "epochs": 20},
               recipes={"sgd-nesterov-masked-cosine": _RESNET_RECIPE}, engine="port", augment="crop-flip",
               signature=("layer1.0.conv1.weight", "fc.weight")),
        Family("gpt", GPTConfig, "a nanoGPT-style character model on the fortunes corpus", data=TEXT,
               flags={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.1, "schedule": "warmup-cosine",
                      "warmup_steps": 100, "clip_norm": 1.0, "no_decay": _GPT_RECIPE.no_decay, "batch_size": 64,
                      "epochs": 10, "epoch_steps": 500},
               recipes={"adamw-warmup-cosine-clip": _GPT_RECIPE}, engine="port",
               signature=("wte.weight", "h.0.attn.in_proj_weight")),
    )
}  # fmt: skip
NAMES = tuple(FAMILIES)
BUILTIN = tuple(n for n, f in FAMILIES.items() if f.engine == "builtin")  # the built-in engine's


def family(name_or_config) -> Family:
    """The family named ``name_or_config`` (a ``--model`` name, or a config: its ``kind``).

    Raises:
        JaxnetError: an unknown name.
    """
    name = name_or_config if isinstance(name_or_config, str) else getattr(name_or_config, "kind", None)
    if name not in FAMILIES:
        raise JaxnetError(f"unknown model {name!r}, expected one of {', '.join(NAMES)}")
    return FAMILIES[name]


def fields(config) -> dict:
    """The config's fields, as the sides' ``from_config`` take them."""
    return dataclasses.asdict(config)


def build(side: str, config, *, seed: int = 0, dtype=None):
    """A fresh model of ``config`` on ``side``: JAX's from ``seed`` in ``dtype`` (a name,
    default float32); torch's from torch's global RNG (seed or fork it first), ``dtype`` a
    ``torch.dtype`` or None (torch's default)."""
    module = family(config).module(side)
    if side == "jax":
        return module.from_config(fields(config), seed=seed, dtype=dtype or "float32")
    return module.from_config(fields(config), dtype)


def augmentation(config):
    """The family's training augmentation, ``f(images, *, seed, step) -> images`` (numpy, drawn
    from ``(seed, step)``: the same in both backends), or None."""
    if not family(config).augment:
        return None
    from jaxnet import augment  # numpy only

    return augment.augment


def model_from_json(text: str):
    """The model config a checkpoint names (format-1 files and older directories: the MLP).

    Raises:
        JaxnetError: an unknown kind, or fields it does not have.
    """
    raw = json.loads(text)
    kind = raw.pop("kind", "mlp")
    if kind not in FAMILIES:
        raise JaxnetError(f"unknown model kind {kind!r}, expected one of {NAMES}")
    try:
        return FAMILIES[kind].config(**raw)
    except TypeError as err:
        raise JaxnetError(f"bad {kind} config ({err})") from None


def infer_config(state: dict):
    """The family and sizes of a plain torch-layout state dict (a tutorial ``model.pth``), by
    the keys each family's ``signature`` names (the MLP's when none matches).

    Raises:
        CheckpointError: the state dict is of no family jaxnet knows, or misshapen.
    """
    found = next(
        (f for f in FAMILIES.values() if f.signature and set(f.signature) <= state.keys()), FAMILIES["mlp"]
    )
    try:
        return found.config.from_state_dict(state)
    except JaxnetError as err:
        raise CheckpointError(str(err)) from None
    except (KeyError, ValueError, IndexError, TypeError) as err:  # keys missing or misshapen
        raise CheckpointError(f"not a state dict of a model jaxnet knows: {err}") from None
