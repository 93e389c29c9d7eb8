"""Checkpoints both backends read and write, in the layout people already use.

A training run writes a directory::

    runs/checkpoint/
      model.safetensors       the weights, torch's keys and [out, in] layout: the tutorial's own
                              NeuralNetwork().load_state_dict(safetensors.torch.load_file(...))
                              loads it strictly; jaxnet.load_model(...) gives the Flax model
      optimizer.safetensors   optimizer state in torch's words (``<param>.exp_avg``, ...)
      state.json              format version, model and training config, epoch and step, backend

written as a whole (a temporary directory renamed into place, :func:`files.atomic_directory`),
so a crash leaves the previous checkpoint or the new one, never a mix. Files follow the umask.

Also read: the single-file checkpoints of format 1 (weights, ``optimizer.``-prefixed state
and metadata in one safetensors file), plain safetensors state dicts, and a tutorial user's
``torch.save(model.state_dict(), "model.pth")`` (needs torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnet import files
from jaxnet.config import AnyModel, CNNConfig, ModelConfig, TrainConfig, model_from_json
from jaxnet.errors import CheckpointError, JaxnetError

FORMAT = "jaxnet-checkpoint"
FORMAT_VERSION = 2
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.safetensors", "state.json"
OPT_PREFIX = "optimizer."  # format 1 kept optimizer tensors in the model file under this prefix
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Checkpoint:
    """Model weights (torch layout), optional optimizer state and training progress."""

    model: dict[str, np.ndarray]
    config: AnyModel
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    train_config: TrainConfig | None = None
    epoch: int = 0
    step: int = 0
    backend: str = ""

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self.model.values())).dtype


def validate_state_dict(
    state: dict[str, np.ndarray], config: AnyModel, dtype: str | np.dtype | None = None
) -> np.dtype:
    """Check keys, shapes, dtypes and values against ``config``; return the (single) float dtype.

    The one validator every loader uses (checkpoint files, both backends' ``load_state_dict``).
    ``dtype`` is the dtype the caller needs; by default any one float dtype for all tensors.

    Raises:
        CheckpointError: ``key 'K': expected <dtype>[shape], found <dtype>[shape]`` and the like.
    """
    expected = config.param_shapes()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"missing key {missing[0]!r} (expected keys {', '.join(expected)})")
    if unexpected:
        raise CheckpointError(f"unexpected key {unexpected[0]!r} (expected keys {', '.join(expected)})")
    want = np.dtype(dtype) if dtype is not None else None
    integers = getattr(config, "integer_keys", ())
    for key, shape in expected.items():
        value = np.asarray(state[key])
        if key in integers:  # a counter (num_batches_tracked): any integer dtype, its own shape
            if tuple(value.shape) != shape or not np.issubdtype(value.dtype, np.integer):
                raise CheckpointError(
                    f"key {key!r}: expected an integer {list(shape)}, found {value.dtype}{list(value.shape)}"
                )
            continue
        if want is None and value.dtype in FLOAT_DTYPES:
            want = value.dtype  # the first tensor sets the dtype for the rest
        wanted = str(want) if want is not None else "float32 or float64"
        if tuple(value.shape) != shape or value.dtype != want:
            raise CheckpointError(
                f"key {key!r}: expected {wanted}{list(shape)}, found {value.dtype}{list(value.shape)}"
            )
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"key {key!r}: holds NaN or inf values")
    return want


def infer_config(state: dict[str, np.ndarray]) -> AnyModel:
    """The model and sizes of a torch-layout state dict, validated (e.g. a tutorial ``model.pth``)."""
    try:
        if "conv1.weight" in state and "fc2.weight" in state:  # PyTorch's examples/mnist CNN
            conv1, conv2, fc1, fc2 = (
                np.shape(state[f"{k}.weight"]) for k in ("conv1", "conv2", "fc1", "fc2")
            )
            config = CNNConfig(channels=(conv1[0], conv2[0]), hidden=fc1[0], num_classes=fc2[0])
        else:
            config = ModelConfig.from_state_dict(state)
    except JaxnetError as err:
        raise CheckpointError(str(err)) from None
    except (KeyError, ValueError, IndexError) as err:  # a CNN's keys, some missing or misshapen
        raise CheckpointError(f"not a state dict of a model jaxnet knows: {err}") from None
    validate_state_dict(state, config)
    return config


def init_state_dict(config: AnyModel, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Fresh weights drawn with numpy, so that both backends can start from the same point.

    The distribution is torch ``nn.Linear``'s and ``nn.Conv2d``'s default,
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias (fan_in: a weight's size over its
    first axis); the stream is numpy's ``default_rng(seed)``, owned by neither framework.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in config.param_shapes().items():
        weight = shape if key.endswith("weight") else state[key.removesuffix("bias") + "weight"].shape
        bound = 1.0 / np.sqrt(np.prod(weight[1:]))
        state[key] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return state


# ---------------------------------------------------------------------------- writing


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Validate ``ckpt`` and write it as a checkpoint directory at ``path``, atomically."""
    path = check_save_path(path)
    dtype = validate_state_dict(ckpt.model, ckpt.config)
    if ckpt.train_config is not None:
        validate_optimizer_state(ckpt.optimizer, ckpt.config, ckpt.train_config, dtype)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.loads(ckpt.config.to_json()),
        "train_config": json.loads(ckpt.train_config.to_json()) if ckpt.train_config else None,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "backend": ckpt.backend,
    }
    with files.atomic_directory(path) as tmp:
        files.atomic_write(tmp / MODEL, files.safetensors_bytes(ckpt.model, {"format": "pt"}))
        if ckpt.optimizer:
            files.atomic_write(tmp / OPTIMIZER, files.safetensors_bytes(ckpt.optimizer, {}))
        files.atomic_write(tmp / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


def check_save_path(path: str | Path) -> Path:
    """``path`` if a checkpoint may be written there: a new directory, or an old checkpoint.

    A save replaces the whole directory, so one holding anything else is refused.

    Raises:
        CheckpointError: a file, or a directory with other files in it.
    """
    path = Path(path)
    if path.suffix in (".safetensors", ".pth", ".pt") or path.is_file():
        raise CheckpointError(f"{path}: a checkpoint is a directory (e.g. runs/checkpoint), not a file")
    if path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if p.name not in (MODEL, OPTIMIZER, STATE))
        if foreign:
            raise CheckpointError(
                f"{path}: holds {', '.join(foreign[:3])}, not only a checkpoint; a save replaces the whole "
                "directory, so pass a new one (e.g. runs/checkpoint)"
            )
    return path


def save_weights(path: str | Path, model: dict[str, np.ndarray]) -> None:
    """A plain safetensors state dict (what ``safetensors.torch.save_file`` writes), atomically."""
    files.atomic_write(path, files.safetensors_bytes(model, {"format": "pt"}))


# ---------------------------------------------------------------------------- reading


def _read_pth(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading .pth files needs torch (pip install 'jaxnet[torch]')"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad pickles
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a loadable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        return files.read_safetensors(path)
    except ValueError as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None


def load(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint directory, a format-1 file, a safetensors state dict or a
    tutorial ``.pth``.

    Raises:
        CheckpointError: the message starts with the path, then names the key and the fault.
    """
    path = files.current(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        return _load_directory(path) if path.is_dir() else _load_file(path)
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _load_directory(path: Path) -> Checkpoint:
    if not (path / MODEL).is_file():
        raise CheckpointError(f"{path}: no {MODEL} in this directory (is it a checkpoint?)")
    model, _ = _read_safetensors(path / MODEL)
    if not (path / STATE).is_file():  # weights alone
        return Checkpoint(model=model, config=infer_config(model))
    try:
        state = json.loads((path / STATE).read_text())
        if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path / STATE}: format {state.get('format')!r} version {state.get('format_version')!r}, "
                f"expected {FORMAT!r} version {FORMAT_VERSION}"
            )
        config = model_from_json(json.dumps(state["model_config"]))
        train = state.get("train_config")
        train_config = TrainConfig.from_json(json.dumps(train)) if train else None
        epoch, step, backend = int(state["epoch"]), int(state["step"]), str(state.get("backend", ""))
    except (KeyError, TypeError, ValueError, JaxnetError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path / STATE}: bad training state ({err})") from None
    optimizer = _read_safetensors(path / OPTIMIZER)[0] if (path / OPTIMIZER).is_file() else {}
    dtype = validate_state_dict(model, config)
    if train_config is not None:
        validate_optimizer_state(optimizer, config, train_config, dtype)
    return Checkpoint(model, config, optimizer, train_config, epoch, step, backend)


def _load_file(path: Path) -> Checkpoint:
    if path.suffix in (".pth", ".pt"):
        model = _read_pth(path)
        return Checkpoint(model=model, config=infer_config(model))
    tensors, metadata = _read_safetensors(path)
    model = {k: v for k, v in tensors.items() if not k.startswith(OPT_PREFIX)}
    optimizer = {k.removeprefix(OPT_PREFIX): v for k, v in tensors.items() if k.startswith(OPT_PREFIX)}
    if metadata.get("format") != FORMAT:  # a plain safetensors state dict: weights only
        return Checkpoint(model=model, config=infer_config(model))
    if metadata.get("format_version") != "1":
        raise CheckpointError(
            f"{path}: format version {metadata.get('format_version')!r}, expected '1' for a file"
        )
    try:
        config = model_from_json(metadata["model_config"])
        train_config = TrainConfig.from_json(metadata["train_config"]) if "train_config" in metadata else None
        progress = json.loads(metadata.get("progress", "{}"))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad metadata ({err})") from None
    dtype = validate_state_dict(model, config)
    if train_config is not None:
        validate_optimizer_state(optimizer, config, train_config, dtype)
    return Checkpoint(
        model, config, optimizer, train_config, int(progress.get("epoch", 0)), int(progress.get("step", 0)),
        metadata.get("backend", ""),
    )  # fmt: skip


def validate_optimizer_state(
    optimizer: dict[str, np.ndarray], config: AnyModel, train: TrainConfig, dtype: np.dtype
) -> None:
    """The canonical optimizer state must have one entry per (parameter, state name)."""
    names = train.optimizer.state_names
    if not optimizer:
        return  # before the first step (or plain SGD) there is no state
    for key, shape in config.param_shapes().items():
        for name in names:
            full = f"{key}.{name}"
            if full not in optimizer:
                raise CheckpointError(f"missing optimizer key {full!r}")
            value = optimizer[full]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise CheckpointError(
                    f"optimizer key {full!r}: expected {dtype}{list(shape)}, found {value.dtype}{list(value.shape)}"
                )
    extra = set(optimizer) - {f"{k}.{n}" for k in config.param_shapes() for n in names}
    if extra:
        raise CheckpointError(f"unexpected optimizer key {sorted(extra)[0]!r}")
