"""The :class:`~jaxnet.backends.Backend` interface over the Flax NNX model (never imports torch).

The model is split once into ``(graphdef, params)``; every hot path is a module-level
``jax.jit`` of a pure function (``jaxnet.train``), so all instances share compiled code.
The model is the config's (the tutorial MLP, the CNN) or, for ``jaxnet.parity.compare``, a
user's NNX port, whose names and layouts follow the config's :class:`~jaxnet.layout.Layout`.

Numeric mode is the instance's own, not the process's: a float64 backend runs each call
under ``jax.enable_x64(True)``, a float32 one under ``jax.enable_x64(False)``, so creating one
never switches x64 on for anyone else.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import replace

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnet import checkpoint, registry
from jaxnet import model as jmodel
from jaxnet import train as jtrain
from jaxnet.config import PREDICT_CHUNK, AnyModel, OptimConfig
from jaxnet.distributed import Rank
from jaxnet.errors import JaxnetError
from jaxnet.layout import Layout


def _in_mode(method: Callable) -> Callable:
    """Run ``method`` with x64 on for a float64 backend and off for a float32 one."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with jax.enable_x64(self.dtype == "float64"):
            return method(self, *args, **kwargs)

    return wrapper


def jax_device(device: str) -> jax.Device:
    """``auto`` is JAX's default device; ``cpu`` and ``cuda`` must exist."""
    if device == "auto":
        return jax.devices()[0]
    platform = "gpu" if device == "cuda" else "cpu"
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        raise JaxnetError(f"device {device!r} requested but JAX sees no {platform} device") from None


# Compiled code is shared by every instance: the model functions are jitted once per module,
# and an optimizer's step functions once per (model structure, recipe, dtype).
_COMPILED: dict[tuple, tuple] = {}


def clear_caches(model: bool = True) -> None:
    """Forget this module's compiled steps (and with ``model`` its forward and gradient
    programs) and the shapes-only models, so that a function swapped for another (a planted
    fault) is traced afresh; JAX's other caches stay warm. Whoever patches model code outside
    :func:`jaxnet.parity.faults.planted` calls this first."""
    _COMPILED.clear()
    _INIT.clear_cache()  # keyed by the optimizers _COMPILED held
    _abstract.cache_clear()  # a model built before holds the functions it was built with
    if model:
        for jitted in (_EVAL, _GRADS, _ACTS, _LOGITS):
            jitted.clear_cache()


def _optimizer(graphdef, cfg: OptimConfig, dtype: str, mesh: Mesh | None, loss: str, layout: Layout) -> tuple:
    """``(tx, step, scan, apply)`` for ``cfg``, built and jitted once per model, dtype and mesh
    (and the layout that names the parameters, where ``no_decay`` reads the names)."""
    if cfg.schedule == "constant":  # the run's length does not enter the program
        cfg = replace(cfg, total_steps=0)
    key = (graphdef, cfg, dtype, mesh, loss, repr(layout) if cfg.no_decay else None)
    if key not in _COMPILED:
        # the layout only where it is read: planted faults stand in for make_optimizer(cfg, dtype)
        tx = jtrain.make_optimizer(cfg, dtype, layout) if cfg.no_decay else jtrain.make_optimizer(cfg, dtype)
        shard = None
        if mesh is not None:  # each gathered batch split over the mesh's "batch" axis
            shard = functools.partial(
                jax.lax.with_sharding_constraint, shardings=NamedSharding(mesh, P("batch"))
            )
        _COMPILED[key] = (tx, *jtrain.compiled(graphdef, tx, shard, loss))
    return _COMPILED[key]


def data_parallel_mesh(devices: int) -> Mesh | None:
    """A one-axis mesh over the first ``devices`` devices (of every process); None for one.

    Raises:
        JaxnetError: fewer devices than asked for.
    """
    if devices <= 1 and jax.process_count() == 1:
        return None
    found = jax.devices()
    if devices > len(found):
        hint = (
            " (on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)"
            if found[0].platform == "cpu"
            else ""
        )
        raise JaxnetError(f"--devices {devices}: JAX sees {len(found)} {found[0].platform} device(s){hint}")
    return Mesh(np.array(found[: max(devices, 1)]), ("batch",))


@functools.lru_cache(maxsize=16)
def _abstract(config: AnyModel, dtype: str, seed: int) -> tuple:
    """``(graphdef, params)`` of shapes only, traced once per config (a parity run makes a
    dozen backends of one model; tracing its initialisation took 0.15 s each). Immutable:
    every backend replaces ``params`` with its own arrays."""
    model = nnx.eval_shape(lambda: jmodel.build(config, seed=seed, dtype=dtype))
    return nnx.split(model, nnx.Param)


_host = jmodel.host


def _loss(params, graphdef, x, y, masks, loss):
    """The mean loss, the dropouts given ``masks`` (or off): parity's forward, not training's."""
    outputs = jmodel.apply(nnx.merge(graphdef, params), x, masks)
    return jtrain.mean_loss(outputs, y, loss)


_EVAL = jax.jit(jtrain.evaluate, static_argnums=(0,), static_argnames=("batch_size", "loss"))
_GRADS = jax.jit(jax.value_and_grad(_loss), static_argnums=(1, 5))
_ACTS = jax.jit(
    lambda graphdef, params, x, masks: jmodel.activations(nnx.merge(graphdef, params), x, masks),
    static_argnums=0,
)
_LOGITS = jax.jit(lambda graphdef, params, x: nnx.merge(graphdef, params)(x), static_argnums=0)
# a batch gathered from the training data on the device: one compiled gather per batch size
# (indexing a jax.Array outside jit dispatches a dozen operations from Python every step)
_TAKE = jax.jit(lambda images, labels, idx: (images[idx], labels[idx]))
# the optimizer's fresh state: one compiled program, not a dozen operations dispatched one by one
# (a teacher-forced step reloads every side's optimizer: 5.8 ms of 14 per load)
_INIT = jax.jit(lambda tx, params: tx.init(params), static_argnums=0)
_KEYS = jax.jit(lambda key, steps: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, steps))


class JaxBackend:
    """Flax NNX model as ``(graphdef, params)``; training runs as compiled ``lax.scan``.

    ``scan=False`` runs one jitted step per batch instead (the readable reference loop); the
    two give bit-identical results on CPU. The default is the family's (``registry``): the
    MLP's steps are scanned, the CNN's not: XLA's CPU convolutions inside a ``while`` loop ran 7x slower than the same step
    jitted alone (1.1 s against 0.15 s per step of 64, measured on this project's CPU).
    With ``state`` the model is built abstractly (shapes only, nothing computed or compiled)
    and the weights are those of ``state``.
    """

    name = "jax"

    def __init__(
        self,
        config: AnyModel,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        state: dict[str, np.ndarray] | None = None,
        scan: bool | None = None,
        devices: int = 1,
    ) -> None:
        self.config, self.dtype, self.seed = config, dtype, seed
        self.scan = registry.family(config).scan if scan is None else scan
        self.layout = config.layout
        self.device = jax_device(device)
        self.mesh = data_parallel_mesh(devices)
        self.shards = 1 if self.mesh is None else self.mesh.size  # ways each batch is split
        self.rank = Rank(jax.process_index(), jax.process_count())
        self.step = 0
        self.tx = None
        self.train_dropout = bool(config.dropouts)  # the CNN trains with dropout
        self._data: tuple[jax.Array, jax.Array] | None = None
        with jax.enable_x64(dtype == "float64"), jax.default_device(self.device):
            if state is None:
                self.graphdef, self.params = nnx.split(
                    jmodel.build(config, seed=seed, dtype=dtype), nnx.Param
                )
            else:
                self.graphdef, self.params = _abstract(config, dtype, seed)
        if state is not None:
            self.load_state_dict(state)

    def describe(self) -> str:
        where = f"{self.device.platform}:{self.device.id} ({self.device.device_kind})"
        if self.mesh is not None:
            where = f"{self.mesh.size} {self.device.platform} devices in {jax.process_count()} process(es), data-parallel"
        return f"jax {jax.__version__} on {where}"

    def _put(self, x) -> jax.Array:
        """On the device, or replicated on every device of the mesh."""
        return jax.device_put(x, self.device if self.mesh is None else NamedSharding(self.mesh, P()))

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process (a Ctrl-C seen by one stops all at one step)."""
        if jax.process_count() == 1:
            return flag
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))

    def _input(self, x: np.ndarray) -> jax.Array:
        """Images in the model's layout (NHWC for a channels-last port), on the device."""
        return self._put(self.layout.activation_from_torch(x))

    def _masks(self, masks: dict[str, np.ndarray] | None) -> dict[str, jax.Array] | None:
        """Torch-layout dropout masks in the model's layout (the built-in models use torch's names)."""
        if not masks:
            return None
        return {k: self._put(self.layout.activation_from_torch(m)) for k, m in masks.items()}

    @_in_mode
    def state_dict(self) -> dict[str, np.ndarray]:
        return jmodel.to_torch_layout(self.params, self.layout)  # its kernels turned by XLA

    @_in_mode
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        checkpoint.validate_state_dict(state, self.config, self.dtype)
        self.params = self._put(jmodel.from_torch_layout(self.params, state, self.layout))

    @_in_mode
    def activations(self, x: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        acts = _host(_ACTS(self.graphdef, self.params, self._input(x), self._masks(masks)))
        torch_name = self.layout.torch_module
        return {torch_name(k.split(".")): self.layout.activation_to_torch(v) for k, v in acts.items()}

    @_in_mode
    def loss_and_grads(
        self, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        args = (self._input(x), self._put(y), self._masks(masks), self.config.loss)
        loss, grads = _GRADS(self.params, self.graphdef, *args)
        return float(loss), jmodel.to_torch_layout(grads, self.layout)

    @_in_mode
    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None:
        self.tx, self._step, self._scan, self._apply = _optimizer(
            self.graphdef, cfg, self.dtype, self.mesh, self.config.loss, self.layout
        )
        self.load_optimizer_state(state, step)

    @_in_mode
    def load_optimizer_state(self, state: dict[str, np.ndarray] | None, step: int) -> None:
        assert self.tx is not None, "set_optimizer first"
        fresh = _INIT(self.tx, self.params)
        self.opt_state = self._put(jtrain.import_opt_state(fresh, state or {}, step, self.layout))
        self.step = step

    @_in_mode
    def optimizer_state(self) -> dict[str, np.ndarray]:
        return jtrain.export_opt_state(self.opt_state, self.step, self.layout)

    @_in_mode
    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        tree = self._put(jmodel.from_torch_layout(self.params, grads, self.layout))
        self.params, self.opt_state = self._apply(self.params, self.opt_state, tree)
        self.step += 1

    @_in_mode
    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._data = (self._input(images), self._put(labels))

    def _keys(self, first: int, n: int) -> jax.Array | None:
        """Dropout keys of steps ``first .. first + n - 1``: a function of the seed and the
        global step only, so a resumed run draws the masks the uninterrupted one did."""
        if not self.train_dropout:
            return None
        return self._put(_KEYS(jax.random.key(self.seed), np.arange(first, first + n, dtype=np.int32)))

    @_in_mode
    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        """One step per index array; each run of equal-sized batches is one compiled scan.

        With ``scan=False``, one jitted step per batch on a batch gathered outside it: the
        readable loop, bit-identical to the scan on CPU.
        """
        assert self.tx is not None and self._data is not None, "set_optimizer and set_train_data first"
        images, labels = self._data
        losses, step = [], self.step
        for _, group in itertools.groupby(batches, key=len):
            run = list(group)
            keys = self._keys(step, len(run))
            if self.scan:
                idx = self._put(np.stack(run))
                self.params, self.opt_state, chunk = self._scan(
                    self.params, self.opt_state, images, labels, idx, keys
                )
                losses.append(chunk)
            else:
                for i, batch in enumerate(run):
                    x, y = _TAKE(images, labels, self._put(batch))
                    self.params, self.opt_state, loss = self._step(
                        self.params, self.opt_state, x, y, None if keys is None else keys[i]
                    )
                    losses.append(loss)  # a scalar: made 1-D on the host, not by a jax operation
            step += len(run)
        self.step = step
        return np.concatenate([np.atleast_1d(_host(chunk)) for chunk in losses]) if losses else np.zeros(0)

    @_in_mode
    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        correct, avg = _EVAL(
            self.graphdef,
            self.params,
            self._input(images),
            self._put(labels),
            batch_size=batch_size,
            loss=self.config.loss,
        )
        return int(correct), float(avg)

    @_in_mode
    def predict(self, images: np.ndarray) -> np.ndarray:
        chunks = [images[i : i + PREDICT_CHUNK] for i in range(0, len(images), PREDICT_CHUNK)]
        return np.concatenate([_host(_LOGITS(self.graphdef, self.params, self._input(c))) for c in chunks])
