"""The :class:`~jaxnet.backend.Backend` interface over ``torchref`` (imported only when asked for)."""

from __future__ import annotations

import numpy as np

from jaxnet.config import ModelConfig, OptimConfig
from jaxnet.errors import CheckpointError, JaxnetError

try:
    import torch
except ImportError:  # pragma: no cover - exercised only where torch is absent
    raise JaxnetError("the torch backend needs torch: pip install 'jaxnet[torch]'") from None

import torchref

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torch_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise JaxnetError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


class TorchBackend:
    """``torchref.NeuralNetwork`` with ``torch.optim``; batches sliced from pre-made tensors."""

    name = "torch"

    def __init__(
        self, config: ModelConfig, *, dtype: str = "float32", device: str = "auto", seed: int = 0
    ) -> None:
        self.config, self.dtype = config, dtype
        self.device = _torch_device(device)
        torch.manual_seed(seed)
        self.model = torchref.NeuralNetwork(
            config.in_features, config.hidden, config.num_classes, dtype=_DTYPES[dtype]
        ).to(self.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.step = 0
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return f"torch {torch.__version__} on {self.device} ({where}, {torch.get_num_threads()} threads)"

    def _put(self, x: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(x)
        if not x.flags.writeable:  # e.g. a view of a JAX array; torch wants to own writable memory
            x = x.copy()
        return torch.from_numpy(x).to(self.device)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = self.model.state_dict()
        for key, value in own.items():
            if key not in state:
                raise CheckpointError(f"missing key {key!r}")
            found = np.asarray(state[key])
            expected = str(value.dtype).removeprefix("torch.")
            if tuple(found.shape) != tuple(value.shape) or found.dtype != np.dtype(expected):
                raise CheckpointError(
                    f"key {key!r}: expected {expected}{list(value.shape)}, found {found.dtype}{list(found.shape)}"
                )
        self.model.load_state_dict({k: self._put(np.asarray(state[k])) for k in own})

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
        self.optimizer = torchref.make_optimizer(
            self.model, cfg.name, cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.betas, cfg.eps
        )
        if state:
            torchref.load_optimizer_state(self.model, self.optimizer, state, step)
        self.scheduler = torchref.make_scheduler(
            self.optimizer, cfg.schedule, cfg.total_steps, cfg.gamma, step
        )
        self.step = step

    def optimizer_state(self) -> dict[str, np.ndarray]:
        assert self.optimizer is not None
        return torchref.optimizer_state(self.model, self.optimizer)

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
            if self.scheduler is not None:
                self.scheduler.step()
        self.step += len(batches)
        return torch.stack(losses).cpu().numpy() if losses else np.zeros(0)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        return torchref.evaluate(self.model, self._put(images), self._put(labels), batch_size)

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            return self.model(self._put(images)).cpu().numpy()
