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

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnet import files, registry
from jaxnet.config import AnyModel, ModelConfig, TrainConfig  # noqa: F401  (ModelConfig: public here)
from jaxnet.errors import CheckpointError, JaxnetError
from jaxnet.registry import model_from_json

FORMAT = "jaxnet-checkpoint"
FORMAT_VERSION = 3  # 3: state.json records the parts' SHA-256; 2 (read too) did not
READABLE_VERSIONS = (2, 3)
TRAIN_EXAMPLES = 60000  # Fashion-MNIST's training split: what an epoch of train_limit 0 covers
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
        """The weights' float dtype (integer counters such as ``num_batches_tracked`` aside)."""
        floats = (v.dtype for v in self.model.values() if np.issubdtype(v.dtype, np.floating))
        return next(floats, next(iter(self.model.values())).dtype)


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
        # max propagates NaN; an inf is the max or the min: no boolean array of every element
        if value.size and not (np.isfinite(value.max()) and np.isfinite(value.min())):
            raise CheckpointError(f"key {key!r}: holds NaN or inf values")
    return want


def infer_config(state: dict[str, np.ndarray]) -> AnyModel:
    """The model and sizes of a torch-layout state dict, validated (e.g. a tutorial ``model.pth``)."""
    config = registry.infer_config(state)
    validate_state_dict(state, config)
    return config


def init_state_dict(config: AnyModel, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Fresh weights drawn with numpy, so that both backends can start from the same point.

    The distribution is torch ``nn.Linear``'s and ``nn.Conv2d``'s default,
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weight and bias (fan_in: a weight's size over its
    first axis); the stream is numpy's ``default_rng(seed)``, owned by neither framework. A
    family whose config has its own ``initial_state`` (the ResNet's torchvision init, the
    GPT's nanoGPT init, with their running statistics) draws that instead.
    """
    own = getattr(config, "initial_state", None)
    if own is not None:
        return own(seed, dtype)
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in config.param_shapes().items():
        weight = shape if key.endswith("weight") else state[key.removesuffix("bias") + "weight"].shape
        bound = 1.0 / np.sqrt(np.prod(weight[1:]))
        state[key] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return state


# ---------------------------------------------------------------------------- writing


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Validate ``ckpt`` and write it as a checkpoint directory at ``path``, atomically.

    ``state.json`` records each part's SHA-256 and one of its own fields (``checksum``), so a
    part copied from another run, or damaged, is refused on load (:func:`load`).
    """
    path = check_save_path(path)
    dtype = validate_state_dict(ckpt.model, ckpt.config)
    if ckpt.train_config is not None:
        validate_optimizer_state(ckpt.optimizer, ckpt.config, ckpt.train_config, dtype)
    elif ckpt.optimizer:
        raise CheckpointError("optimizer state without a training config to name its optimizer")
    parts = {MODEL: files.safetensors_bytes(ckpt.model, {"format": "pt"})}
    if ckpt.optimizer:
        name = ckpt.train_config.optimizer.name
        parts[OPTIMIZER] = files.safetensors_bytes(
            ckpt.optimizer, {"optimizer": name, "step": str(ckpt.step)}
        )
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": json.loads(ckpt.config.to_json()),
        "train_config": json.loads(ckpt.train_config.to_json()) if ckpt.train_config else None,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "backend": ckpt.backend,
        "sha256": {name: hashlib.sha256(blob).hexdigest() for name, blob in parts.items()},
    }
    state["checksum"] = _checksum(state)
    with files.atomic_directory(path) as tmp:
        for name, blob in parts.items():
            files.atomic_write(tmp / name, blob)
        files.atomic_write(tmp / STATE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


def _checksum(state: dict) -> str:
    """SHA-256 of ``state.json``'s fields but ``checksum`` itself, as canonical JSON: a changed
    value (a flipped digit of the learning rate) is refused instead of resumed."""
    rest = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    """All or nothing: every part is read and checked against ``state.json`` (its family, its
    step, its SHA-256) before anything is returned, so no run resumes half of a checkpoint."""
    model_path, opt_path, state_path = path / MODEL, path / OPTIMIZER, path / STATE
    if not model_path.is_file():
        raise CheckpointError(f"{path}: no {MODEL} in this directory (is it a checkpoint?)")
    if not state_path.is_file():
        if opt_path.exists():
            raise CheckpointError(
                f"{state_path}: missing, yet {OPTIMIZER} is here: a training state without its "
                f"description (for the weights alone, pass {model_path})"
            )
        model, _ = _read_part(model_path)[:2]
        return Checkpoint(model=model, config=infer_config(model))
    state, config, train_config, epoch, step, backend = _read_state(state_path)
    hashes = state.get("sha256", {}) if state["format_version"] >= 3 else None
    if hashes is not None and not isinstance(hashes, dict):
        raise CheckpointError(f"{state_path}: bad training state ('sha256' is not a mapping)")

    model, _, digest = _read_part(model_path)
    _check_family(model_path, model, config)
    _check_digest(model_path, digest, hashes)
    dtype = _in_part(model_path, validate_state_dict, model, config)

    optimizer: dict[str, np.ndarray] = {}
    names = train_config.optimizer.state_names if train_config else ()
    expected = bool(names) and step > 0  # the optimizer keeps state from its first step on
    if expected and not opt_path.is_file():
        raise CheckpointError(
            f"{opt_path}: missing; {STATE} names {train_config.optimizer.name} at step {step}, whose "
            f"state ({', '.join(names)}) this file holds: a resume without it would restart the "
            f"optimizer (for the weights alone, pass {model_path})"
        )
    if opt_path.exists():
        what = f"{train_config.optimizer.name} at step {step}" if train_config else "no training config"
        if not expected:
            raise CheckpointError(
                f"{opt_path}: present, but {STATE} names {what}, which keeps no optimizer state "
                "(parts of two checkpoints?)"
            )
        optimizer, metadata, digest = _read_part(opt_path)
        if "step" in metadata and metadata["step"] != str(step):
            raise CheckpointError(
                f"{opt_path}: the optimizer state of step {metadata['step']}, but {STATE} is at step {step}"
            )
        if "optimizer" in metadata and metadata["optimizer"] != train_config.optimizer.name:
            raise CheckpointError(
                f"{opt_path}: {metadata['optimizer']}'s state, but {STATE} names {train_config.optimizer.name}"
            )
        _check_digest(opt_path, digest, hashes)
        _in_part(opt_path, validate_optimizer_state, optimizer, config, train_config, dtype)
    return Checkpoint(model, config, optimizer, train_config, epoch, step, backend)


def _read_state(state_path: Path) -> tuple:
    """``state.json``'s dict, model config, train config, epoch, step and backend, each checked."""
    try:
        state = json.loads(state_path.read_text())
        if not isinstance(state, dict):
            raise CheckpointError(f"{state_path}: bad training state (not a JSON object)")
        if state.get("format") != FORMAT or state.get("format_version") not in READABLE_VERSIONS:
            raise CheckpointError(
                f"{state_path}: format {state.get('format')!r} version {state.get('format_version')!r}, "
                f"expected {FORMAT!r} version {' or '.join(map(str, READABLE_VERSIONS))}"
            )
        if state["format_version"] >= 3 and state.get("checksum") != _checksum(state):
            raise CheckpointError(
                f"{state_path}: its fields do not match its checksum (edited or damaged; a resume "
                "from it would not continue the run that wrote it)"
            )
        config = model_from_json(json.dumps(state["model_config"]))
        train = state.get("train_config")
        train_config = TrainConfig.from_json(json.dumps(train)) if train else None
        epoch, step, backend = int(state["epoch"]), int(state["step"]), str(state.get("backend", ""))
    except (KeyError, TypeError, ValueError, AttributeError, JaxnetError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{state_path}: bad training state ({err})") from None
    if train_config is not None:
        n = min(train_config.train_limit or TRAIN_EXAMPLES, TRAIN_EXAMPLES)
        per_epoch = train_config.epoch_steps or math.ceil(n / train_config.batch_size)
        if step < 0 or epoch != step // per_epoch or step > train_config.epochs * per_epoch:
            raise CheckpointError(
                f"{state_path}: step {step} and epoch {epoch} disagree ({per_epoch} steps an epoch, "
                f"{train_config.epochs} epochs)"
            )
    return state, config, train_config, epoch, step, backend


def _read_part(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """A part's tensors, metadata and SHA-256 (of the bytes read, so the three agree)."""
    try:
        blob = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable ({err.strerror or err})") from None
    try:
        from safetensors.numpy import load as load_bytes

        tensors = load_bytes(blob)
        header_len = int.from_bytes(blob[:8], "little")
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from None
    return tensors, metadata, hashlib.sha256(blob).hexdigest()


def _check_family(path: Path, model: dict[str, np.ndarray], config: AnyModel) -> None:
    """The weights must be of the model ``state.json`` names (not a CNN's beside an MLP's state)."""
    if set(model) == set(config.param_shapes()):
        return
    try:
        found = infer_config(model).kind
    except CheckpointError:
        found = "unknown"
    if found != config.kind:
        raise CheckpointError(
            f"{path}: weights of the {found} model, but {STATE} names the {config.kind} model "
            "(parts of two checkpoints?)"
        )


def _check_digest(path: Path, digest: str, hashes: dict | None) -> None:
    if hashes is None:  # format 2 recorded none
        return
    recorded = hashes.get(path.name)
    if recorded != digest:
        said = f"records {str(recorded)[:12]}..." if recorded else "records none"
        raise CheckpointError(
            f"{path}: SHA-256 {digest[:12]}..., but {STATE} {said} (a file from another run, or damaged)"
        )


def _in_part(path: Path, check, *args):
    """``check(*args)``, its error prefixed with the part it is about."""
    try:
        return check(*args)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


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
    buffers = set(getattr(config, "buffers", ()))  # running statistics: no optimizer state
    params = {k: s for k, s in config.param_shapes().items() if k not in buffers}
    for key, shape in params.items():
        for name in names:
            full = f"{key}.{name}"
            if full not in optimizer:
                raise CheckpointError(f"missing optimizer key {full!r}")
            value = optimizer[full]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise CheckpointError(
                    f"optimizer key {full!r}: expected {dtype}{list(shape)}, found {value.dtype}{list(value.shape)}"
                )
    extra = set(optimizer) - {f"{k}.{n}" for k in params for n in names}
    if extra:
        raise CheckpointError(f"unexpected optimizer key {sorted(extra)[0]!r}")
