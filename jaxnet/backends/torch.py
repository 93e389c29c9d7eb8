"""The :class:`~jaxnet.backends.Backend` interface over ``torchref`` (never imports jax).

Imported only by ``get_backend("torch", ...)`` and by the harness, so that the JAX-only
commands work without torch installed and a torch run never starts JAX.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

import torchref
from jaxnet import checkpoint
from jaxnet.config import ModelConfig, OptimConfig
from jaxnet.errors import JaxnetError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees it, else the CPU; ``cuda`` must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise JaxnetError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul precision (``"highest"``, ``"high"``: TF32) for the block, then
    whatever was set before (``set_float32_matmul_precision`` is process-wide)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A torch-owned copy of ``x`` on ``device``.

    Always a copy into torch's allocator: numpy memory is only 16-byte aligned, and a tensor
    aliasing it would make the kernels' alignment (and so, for MKL, the rounding) depend on
    where numpy happened to put the array.
    """
    return torch.tensor(np.ascontiguousarray(x), device=device)


class TorchBackend:
    """``torchref.NeuralNetwork`` with ``torch.optim``; batches sliced from pre-made tensors."""

    name = "torch"

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        state: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.config, self.dtype = config, dtype
        self.device = torch_device(device)
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
            torch.manual_seed(seed)
            self.model = torchref.NeuralNetwork(
                config.in_features, config.hidden, config.num_classes, dtype=_DTYPES[dtype]
            ).to(self.device)
        self.cfg: OptimConfig | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.step = 0
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        if state is not None:
            self.load_state_dict(state)

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return f"torch {torch.__version__} on {self.device} ({where}, {torch.get_num_threads()} threads)"

    def _put(self, x: np.ndarray) -> torch.Tensor:
        return tensor(x, self.device)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        checkpoint.validate_state_dict(state, self.config, self.dtype)
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                value.copy_(self._put(state[key]))

    def activations(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            acts = torchref.activations(self.model, self._put(x))
        return {k: v.cpu().numpy() for k, v in acts.items()}

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = torchref.loss_and_grads(self.model, self._put(x), self._put(y))
        return float(loss), {k: g.cpu().numpy() for k, g in grads.items()}

    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None:
        self.cfg = cfg
        self.optimizer = torchref.make_optimizer(
            self.model, cfg.name, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.betas, cfg.eps
        )
        self.load_optimizer_state(state, step)

    def load_optimizer_state(self, state: dict[str, np.ndarray] | None, step: int) -> None:
        assert self.optimizer is not None and self.cfg is not None, "set_optimizer first"
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:  # a fresh schedule starts from the base lr
            group["lr"] = group["initial_lr"] = self.cfg.lr
        if state:
            torchref.load_optimizer_state(self.model, self.optimizer, state, step)
        self.scheduler = torchref.make_scheduler(
            self.optimizer, self.cfg.schedule, self.cfg.total_steps, self.cfg.gamma, step
        )
        self.step = step

    def optimizer_state(self) -> dict[str, np.ndarray]:
        assert self.optimizer is not None
        return torchref.optimizer_state(self.model, self.optimizer)

    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        assert self.optimizer is not None, "set_optimizer first"
        for name, param in self.model.named_parameters():
            param.grad = self._put(grads[name])
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._after_step(1)

    def _after_step(self, steps: int) -> None:
        if self.scheduler is not None:
            for _ in range(steps):
                self.scheduler.step()
        self.step += steps

    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._data = (self._put(images), self._put(labels))

    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        assert self.optimizer is not None and self._data is not None, "set_optimizer and set_train_data first"
        images, labels = self._data
        self.model.train()
        losses = []
        for idx in batches:
            i = torch.from_numpy(idx).to(self.device)
            losses.append(torchref.train_step(self.model, self.optimizer, images[i], labels[i]))
            self._after_step(1)
        return torch.stack(losses).cpu().numpy() if losses else np.zeros(0)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        return torchref.evaluate(self.model, self._put(images), self._put(labels), batch_size)

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model(self._put(images)).cpu().numpy()
