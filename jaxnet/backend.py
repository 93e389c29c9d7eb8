"""The one interface the harness (train, eval, parity, bench) uses to drive either framework.

Everything crosses as numpy arrays in torch layout with torch key names; each backend
converts at its edge. ``get_backend("torch", ...)`` imports torch only then, so ``import
jaxnet`` and the JAX-only commands work without torch installed.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnet import model as jmodel
from jaxnet import train as jtrain
from jaxnet.config import BACKENDS, DEVICES, ModelConfig, OptimConfig
from jaxnet.errors import JaxnetError


class Backend(Protocol):
    """A model, its optimizer and its training data in one framework."""

    name: str
    config: ModelConfig
    dtype: str
    step: int  # optimizer steps taken so far

    def state_dict(self) -> dict[str, np.ndarray]: ...
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...
    def activations(self, x: np.ndarray) -> dict[str, np.ndarray]: ...
    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]: ...
    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None: ...
    def optimizer_state(self) -> dict[str, np.ndarray]: ...
    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None: ...
    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray: ...
    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]: ...
    def predict(self, images: np.ndarray) -> np.ndarray: ...
    def describe(self) -> str: ...


def get_backend(
    name: str,
    config: ModelConfig,
    *,
    dtype: str = "float32",
    device: str = "auto",
    seed: int = 0,
    state: dict[str, np.ndarray] | None = None,
) -> Backend:
    """Build a backend; ``state`` (torch layout) overrides the backend's own initialisation."""
    if device not in DEVICES:
        raise JaxnetError(f"device must be one of {DEVICES}, got {device!r}")
    if name == "jax":
        backend: Backend = JaxBackend(config, dtype=dtype, device=device, seed=seed)
    elif name == "torch":
        from jaxnet.torch_backend import TorchBackend

        backend = TorchBackend(config, dtype=dtype, device=device, seed=seed)
    else:
        raise JaxnetError(f"backend must be one of {BACKENDS}, got {name!r}")
    if state is not None:
        backend.load_state_dict(state)
    return backend


def enable_x64() -> None:
    """float64 in JAX needs x64 on before arrays are made; without it float64 silently is float32."""
    jax.config.update("jax_enable_x64", True)


def _jax_device(device: str) -> jax.Device:
    if device == "auto":
        return jax.devices()[0]
    platform = "gpu" if device == "cuda" else "cpu"
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        raise JaxnetError(f"device {device!r} requested but JAX sees no {platform} device") from None


_EVAL = jax.jit(jtrain.evaluate, static_argnums=(0,), static_argnames="batch_size")
_GRADS = jax.jit(jtrain.loss_and_grads, static_argnums=(1,))
_ACTS = jax.jit(
    lambda graphdef, params, x: jmodel.activations(nnx.merge(graphdef, params), x), static_argnums=(0,)
)
_LOGITS = jax.jit(lambda graphdef, params, x: nnx.merge(graphdef, params)(x), static_argnums=(0,))


class JaxBackend:
    """Flax NNX model split into ``(graphdef, params)``; training runs as compiled ``lax.scan``.

    ``scan=False`` runs one jitted step per batch instead (the readable reference loop); the
    two give bit-identical results on CPU.
    """

    name = "jax"

    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        scan: bool = True,
    ) -> None:
        if dtype == "float64":
            enable_x64()
        self.config, self.dtype, self.scan = config, dtype, scan
        self.device = _jax_device(device)
        with jax.default_device(self.device):
            self.graphdef, self.params = nnx.split(jmodel.build(config, seed=seed, dtype=dtype), nnx.Param)
        self.step = 0
        self.tx = None
        self._data: tuple[jax.Array, jax.Array] | None = None
        # Module-level jits: their caches are keyed by graphdef, shared by every instance.
        self._eval, self._grads, self._acts, self._logits = _EVAL, _GRADS, _ACTS, _LOGITS

    def describe(self) -> str:
        return f"jax {jax.__version__} on {self.device.platform}:{self.device.id} ({self.device.device_kind})"

    def _put(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(x, self.device)

    def state_dict(self) -> dict[str, np.ndarray]:
        return jmodel.to_torch_layout(self.params)

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.params = jax.device_put(jmodel.from_torch_layout(self.params, state), self.device)

    def activations(self, x: np.ndarray) -> dict[str, np.ndarray]:
        acts = self._acts(self.graphdef, self.params, self._put(x))
        return {k: np.asarray(v) for k, v in acts.items()}

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        loss, grads = self._grads(self.params, self.graphdef, self._put(x), self._put(y))
        return float(loss), jmodel.to_torch_layout(grads)

    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None:
        self.tx = jtrain.make_optimizer(cfg, self.dtype)
        opt_state = self.tx.init(self.params)
        self.opt_state = jax.device_put(jtrain.import_opt_state(opt_state, state or {}, step), self.device)
        self.step = step
        self._step, self._scan = jtrain.compiled(self.graphdef, self.tx)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        return jtrain.export_opt_state(self.opt_state, self.step)

    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._data = (self._put(images), self._put(labels))

    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        """Run one step per index array; equal-sized runs of batches go through one scan."""
        assert self.tx is not None and self._data is not None, "set_optimizer and set_train_data first"
        images, labels = self._data
        losses = []
        for _, run in itertools.groupby(batches, key=len):
            run = list(run)
            if self.scan and len(run) > 1:
                idx = self._put(np.stack(run))
                self.params, self.opt_state, chunk = self._scan(
                    self.params, self.opt_state, images, labels, idx
                )
                losses.append(chunk)
                continue
            for batch in run:
                idx = self._put(batch)
                self.params, self.opt_state, loss = self._step(
                    self.params, self.opt_state, images[idx], labels[idx]
                )
                losses.append(loss[None])
        self.step += len(batches)
        return np.asarray(jnp.concatenate(losses)) if losses else np.zeros(0)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        correct, avg = self._eval(
            self.graphdef, self.params, self._put(images), self._put(labels), batch_size=batch_size
        )
        return int(correct), float(avg)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._logits(self.graphdef, self.params, self._put(images)))
