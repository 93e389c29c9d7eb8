"""The one interface the harness (train, eval, parity, bench) uses to drive either framework.

This module imports neither framework: :func:`get_backend` imports ``jaxnet.backends.jax``
or ``jaxnet.backends.torch`` only when that backend is asked for, so a torch run never
starts JAX and a JAX run never loads torch.

Everything crosses the interface as numpy arrays in torch's layout under torch's state-dict
names (``linear_relu_stack.0.weight`` is ``[out, in]``); each backend converts at its edge.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from jaxnet import registry
from jaxnet.config import BACKENDS, DEVICES, AnyModel, OptimConfig
from jaxnet.distributed import Rank
from jaxnet.errors import JaxnetError


class Backend(Protocol):
    """A model, its optimizer and its training data in one framework.

    Attributes:
        name: ``"jax"`` or ``"torch"``.
        config: the model: its kind (the tutorial MLP, the CNN, a user's port), sizes and loss.
        dtype: ``"float32"`` or ``"float64"``, of the parameters and the arithmetic.
        step: optimizer steps taken so far (Adam's bias-correction count, the schedule position).
        rank: this process's place in a data-parallel run; ``rank.writer`` prints and saves.
        shards: how many parts each batch is split into (devices or processes); every batch
            size must divide by it.
    """

    name: str
    config: AnyModel
    dtype: str
    step: int
    rank: Rank  # this process's place in a multi-process run (0 of 1 alone)
    shards: int  # the number of parts each batch is split into (devices or processes)

    def describe(self) -> str:
        """Framework version and device, for logs and reports."""
        ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters: ``{torch key: array}`` in torch layout, the backend's own no more (a JAX
        backend's may be read-only views of its device buffers on a CPU: copy before writing)."""
        ...

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process of the run (itself alone: ``flag``)."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace the parameters; keys, shapes and dtype must match exactly.

        Raises:
            CheckpointError: ``key 'K': expected <dtype>[shape], found <dtype>[shape]``.
        """
        ...

    def activations(self, x: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every intermediate output on ``x`` (torch layout), keyed by torch module path.

        In eval mode: dropouts are off, or, given ``masks`` (``{dropout name: 0/1 array}``,
        torch layout), apply those masks as their own draw.
        """
        ...

    def loss_and_grads(
        self, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The mean loss on ``(x, y)`` and its gradient for every parameter (eval mode, or the
        dropouts given ``masks``)."""
        ...

    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None:
        """Build the optimizer and schedule of ``cfg``, then :meth:`load_optimizer_state`."""
        ...

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """``{"<param key>.<momentum_buffer|exp_avg|exp_avg_sq>": array}``; empty before step 1."""
        ...

    def load_optimizer_state(self, state: dict[str, np.ndarray] | None, step: int) -> None:
        """Restore the optimizer's buffers and put the step count (and schedule) at ``step``."""
        ...

    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        """One optimizer step with the given gradients instead of computed ones."""
        ...

    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Put the training split on the device once; :meth:`train_steps` indexes into it."""
        ...

    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        """One optimizer step per array of example indices; the losses, one per step."""
        ...

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        """``(correct, avg_loss)``, avg_loss the tutorial's mean of per-batch mean losses."""
        ...

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits ``[N, num_classes]`` (the CNN: log-probabilities), ``config.PREDICT_CHUNK``
        images at a time (10,000 at once is 1.5 GB of CNN feature maps)."""
        ...


def get_backend(
    name: str,
    config: AnyModel,
    *,
    dtype: str = "float32",
    device: str = "auto",
    seed: int = 0,
    state: dict[str, np.ndarray] | None = None,
    devices: int = 1,
    module: object | None = None,
) -> Backend:
    """Build a backend; ``state`` (torch layout) replaces the framework's own initialisation.

    ``module``: a user's model of this framework (``nn.Module`` or ``nnx.Module``) to wrap
    instead of the config's, described by a :class:`~jaxnet.config.PortConfig` (a copy is
    taken, cast to ``dtype``, in eval mode). A family the registry runs on the port engine
    (the ResNet, the GPT) gets the port backends too, its module built from the config.

    ``devices > 1`` trains data-parallel with the framework's own engine: a JAX device mesh in
    this process (every process of a ``jax.distributed`` run), or torch's
    DistributedDataParallel, whose processes ``jaxnet.distributed`` or ``torchrun`` start.

    Raises:
        JaxnetError: an unknown backend or device, or a framework that is not installed.
    """
    if name not in BACKENDS:
        raise JaxnetError(f"backend must be one of {BACKENDS}, got {name!r}")
    if device not in DEVICES:
        raise JaxnetError(f"device must be one of {DEVICES}, got {device!r}")
    family = registry.FAMILIES.get(getattr(config, "kind", ""))
    on_port = module is not None or (family is not None and family.engine == "port")
    port = "_port" if on_port else ""  # a user's module, or a family on the port engine
    try:
        framework = importlib.import_module(f"jaxnet.backends.{name}{port}")
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] in ("torch", "jax", "jaxlib", "flax", "optax"):
            extra = " (pip install 'jaxnet-parity[torch]')" if name == "torch" else ""
            raise JaxnetError(f"the {name} backend needs {err.name.split('.')[0]}{extra}") from None
        raise
    cls = getattr(
        framework, f"{name.capitalize()}{port.strip('_').capitalize()}Backend"
    )  # e.g. JaxPortBackend
    extra = {"module": module} if on_port else {}
    return cls(config, dtype=dtype, device=device, seed=seed, state=state, devices=devices, **extra)
