"""The checkpoint both backends read and write: one safetensors file, torch names and layout.

Layout of a file::

    linear_relu_stack.0.weight                 [512, 784]   model tensors, torch names
    ...
    optimizer.linear_relu_stack.0.weight.exp_avg            optimizer state, torch's words
    ...
    metadata: format, format_version, model_config (JSON), train_config (JSON),
              progress (JSON: epoch, step), backend

A tutorial user's ``torch.save(model.state_dict(), "model.pth")`` loads too (needs torch).
Writes are atomic (temp file, fsync, rename), so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxnet.config import ModelConfig, TrainConfig
from jaxnet.errors import CheckpointError, JaxnetError

FORMAT = "jaxnet-checkpoint"
FORMAT_VERSION = "1"
OPT_PREFIX = "optimizer."
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Checkpoint:
    """Model weights (torch layout), optional optimizer state and training progress."""

    model: dict[str, np.ndarray]
    config: ModelConfig
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)
    train_config: TrainConfig | None = None
    epoch: int = 0
    step: int = 0
    backend: str = ""

    @property
    def dtype(self) -> np.dtype:
        return next(iter(self.model.values())).dtype


def validate_state_dict(
    state: dict[str, np.ndarray], config: ModelConfig, dtype: str | np.dtype | None = None
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
    for key, shape in expected.items():
        value = np.asarray(state[key])
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


def infer_config(state: dict[str, np.ndarray]) -> ModelConfig:
    """The layer sizes of a torch-layout state dict, validated (e.g. a tutorial ``model.pth``)."""
    try:
        config = ModelConfig.from_state_dict(state)
    except JaxnetError as err:
        raise CheckpointError(str(err)) from None
    validate_state_dict(state, config)
    return config


def init_state_dict(config: ModelConfig, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Fresh weights drawn with numpy, so that both backends can start from the same point.

    The distribution is torch ``nn.Linear``'s default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    for weight and bias; the stream is numpy's ``default_rng(seed)``, owned by neither framework.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in config.param_shapes().items():
        bound = 1.0 / np.sqrt(shape[-1] if key.endswith("weight") else state[key[:-4] + "weight"].shape[1])
        state[key] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return state


# ---------------------------------------------------------------------------- writing


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialise to the safetensors format with a canonical header (sorted keys).

    The ``safetensors`` library writes ``__metadata__`` from a hash map in an order that varies
    from call to call; this writer makes equal checkpoints byte-identical files. Format: an
    8-byte little-endian header length, a JSON header padded with spaces to a multiple of 8,
    then the little-endian tensor bytes in header order. Read back by ``safetensors`` itself.
    """
    header: dict[str, dict] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def save(path: str | Path, ckpt: Checkpoint) -> None:
    """Validate and write ``ckpt`` atomically as safetensors."""
    validate_state_dict(ckpt.model, ckpt.config)
    tensors = {k: np.ascontiguousarray(v) for k, v in ckpt.model.items()}
    tensors |= {OPT_PREFIX + k: np.ascontiguousarray(v) for k, v in ckpt.optimizer.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": ckpt.config.to_json(),
        "progress": json.dumps({"epoch": ckpt.epoch, "step": ckpt.step}),
        "backend": ckpt.backend,
    }
    if ckpt.train_config is not None:
        metadata["train_config"] = ckpt.train_config.to_json()
    atomic_write(path, safetensors_bytes(tensors, metadata))


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


def load(path: str | Path) -> Checkpoint:
    """Read and validate a ``.safetensors`` checkpoint or a tutorial ``.pth`` state dict.

    Raises:
        CheckpointError: the message starts with the path, then names the key and the fault.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return _load(path)
    except CheckpointError as err:
        message = str(err)
        raise CheckpointError(message if message.startswith(str(path)) else f"{path}: {message}") from None


def _load(path: Path) -> Checkpoint:
    if path.suffix in (".pth", ".pt"):
        model = _read_pth(path)
        return Checkpoint(model=model, config=infer_config(model))
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    model = {k: v for k, v in tensors.items() if not k.startswith(OPT_PREFIX)}
    optimizer = {k.removeprefix(OPT_PREFIX): v for k, v in tensors.items() if k.startswith(OPT_PREFIX)}
    if metadata.get("format") != FORMAT:
        # A plain safetensors state dict (e.g. saved by safetensors.torch): weights only.
        return Checkpoint(model=model, config=infer_config(model))
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {metadata.get('format_version')!r}, expected {FORMAT_VERSION!r}"
        )
    try:
        config = ModelConfig.from_json(metadata["model_config"])
        train_config = TrainConfig.from_json(metadata["train_config"]) if "train_config" in metadata else None
        progress = json.loads(metadata.get("progress", "{}"))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad metadata ({err})") from None
    dtype = validate_state_dict(model, config)
    if train_config is not None:
        validate_optimizer_state(optimizer, config, train_config, dtype)
    return Checkpoint(
        model=model,
        config=config,
        optimizer=optimizer,
        train_config=train_config,
        epoch=int(progress.get("epoch", 0)),
        step=int(progress.get("step", 0)),
        backend=metadata.get("backend", ""),
    )


def validate_optimizer_state(
    optimizer: dict[str, np.ndarray], config: ModelConfig, train: TrainConfig, dtype: np.dtype
) -> None:
    """The canonical optimizer state must have one entry per (parameter, state name)."""
    names = train.optimizer.state_names
    if not optimizer:
        return  # before the first step (or plain SGD) there is no state
    for key, shape in config.param_shapes().items():
        for name in names:
            full = f"{key}.{name}"
            if full not in optimizer:
                raise CheckpointError(f"missing optimizer key {OPT_PREFIX + full!r}")
            value = optimizer[full]
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise CheckpointError(
                    f"optimizer key {OPT_PREFIX + full!r}: expected {dtype}{list(shape)}, "
                    f"found {value.dtype}{list(value.shape)}"
                )
    extra = set(optimizer) - {f"{k}.{n}" for k in config.param_shapes() for n in names}
    if extra:
        raise CheckpointError(f"unexpected optimizer key {OPT_PREFIX + sorted(extra)[0]!r}")
