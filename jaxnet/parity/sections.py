"""The parts of a parity run over training steps: the backends and the step sections.

:class:`Run` holds the settings and makes each backend once per run; :func:`steps_section`
compares one recipe's steps teacher-forced and free-running (:mod:`jaxnet.parity.epoch` runs
a whole epoch of them).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from jaxnet import batch
from jaxnet.backends import Backend, get_backend
from jaxnet.config import AnyModel, OptimConfig
from jaxnet.data import batch_slices
from jaxnet.parity.forced import Sides, teacher_forced
from jaxnet.parity.free import FreePair

BATCH = 64


@dataclass
class Run:
    """The backends and settings of one parity run."""

    config: AnyModel
    dtypes: tuple[str, ...]
    device: str
    state: dict[str, np.ndarray]  # float32 initial weights (float64 runs use them upcast)
    factors: dict[str, float]  # dtype -> scale of the float32 floor to that dtype
    reverse: bool  # each batch's examples in reverse order (another reduction order)
    modules: dict[str, object] = field(default_factory=dict)  # "jax"/"torch" -> a user's module
    factory: Callable | None = None  # (name, dtype, role) -> Backend, instead of get_backend

    def __post_init__(self) -> None:
        self._made: dict[tuple[str, str, str], Backend] = {}

    def backend(self, name: str, dtype: str, role: str = "") -> Backend:
        """The backend for ``role``, made once per run and reset to the initial weights."""
        key = (name, dtype, role)
        if key not in self._made:
            if self.factory is not None:
                made = self.factory(name, dtype, role)
                made.load_state_dict(self.weights(dtype))
            else:
                made = get_backend(
                    name,
                    self.config,
                    dtype=dtype,
                    device=self.device,
                    state=self.weights(dtype),
                    module=self.modules.get(name),
                )
            made.train_dropout = False  # steps are compared without random draws
            if getattr(made, "scan", False):
                # one batch per call here: a scan would compile again for every size of the
                # training data a section puts on the device; on CPU the step is bit-identical
                # to it (test_fast_paths); users' training runs the scan
                made.scan = False
            made.training = self.config.trains  # a port with BatchNorm steps in train mode
            self._made[key] = made
        else:
            self._made[key].load_state_dict(self.weights(dtype))
        return self._made[key]

    def weights(self, dtype: str) -> dict[str, np.ndarray]:
        return batch.cast(self.state, dtype)  # counters (num_batches_tracked) stay integers

    def batches(self, order: np.ndarray, n: int) -> list[np.ndarray]:
        out = [order[s] for s in batch_slices(n, BATCH)]
        return [b[::-1].copy() for b in out] if self.reverse else out


def steps_section(setup: Run, recipe: str, opt: OptimConfig, batches, images, labels):
    """Teacher-forced rows and free-running trajectory rows for one recipe.

    Returns the rows, the teacher-forced run (its per-step allowances and gradient floors
    serve the epoch's free-running pair) and the series to plot.
    """
    used, batches = compact(batches)  # only the examples these steps touch go on the devices
    images, labels = batch.take(images, used), batch.take(labels, used)
    relu_inputs, pool_inputs = list(setup.config.relu_inputs), list(setup.config.pool_inputs)
    sides = Sides(
        setup.backend("torch", "float32", "reference"),
        setup.backend("torch", "float64", "floor"),
        setup.backend("torch", "float32", "spare"),
        {d: setup.backend("jax", d, "teacher-forced") for d in setup.dtypes},
        relu_inputs,
        pool_inputs,
    )
    eps = normalising_eps(opt)
    free = {
        d: FreePair(setup.backend("jax", d, "free"), sides.ref if d == "float32" else setup.backend("torch", d, "free"),
                    relu_inputs, eps=eps, own_torch=d != "float32", pool_inputs=pool_inputs,
                    data=lambda idx, d=d: (batch.cast(batch.take(images, idx), d), batch.cast(batch.take(labels, idx), d)))  # float32: eager
        for d in setup.dtypes
    }  # fmt: skip
    everyone = [sides.ref, sides.ref64, sides.spare, *sides.jax.values()]
    everyone += [b for p in free.values() for b in (p.jax, p.torch)]
    for backend in {id(b): b for b in everyone}.values():
        backend.set_optimizer(opt)
        backend.set_train_data(batch.cast(images, backend.dtype), batch.cast(labels, backend.dtype))
    tf = teacher_forced(sides, batches, images, labels, setup.factors, free)
    order = {name: i for i, name in enumerate(setup.config.param_shapes())}  # torch's order, then buffers
    keyed = sorted(tf.rows.items(), key=lambda kv: (kv[0][0] != "float32", _tensor_order(kv[0][1], order)))
    rows = [replace(row, quantity=f"{recipe}: {name}") for (_, name), row in keyed]
    for dtype, pair in free.items():
        rows.append(pair.row(f"trajectory ({len(batches)}, free-running)", recipe, dtype, tf.ratios[dtype]))
    histories = {
        f"{d} {recipe}": {"gap": p.gaps, "bound": p.bounds, "ratio": tf.ratios[d]} for d, p in free.items()
    }
    return rows, tf, histories


def normalising_eps(opt: OptimConfig) -> float:
    """The ``eps`` of an optimizer that normalises its update by the gradient's running size
    (Adam's ``m / (sqrt(v) + eps)``, Adadelta's ``sqrt(acc + eps) / sqrt(avg + eps) g``): near a
    zero gradient such an update is steep in the gradient. 0 for SGD, which is linear."""
    return opt.eps if opt.name in ("adam", "adamw", "adadelta") else 0.0


def _tensor_order(name: str, order: dict[str, int]) -> tuple[int, str]:
    param = name.removeprefix("optimizer.").rsplit(".", 1)[0] if name.startswith("optimizer.") else name
    return (order.get(param, len(order)) + (len(order) if name.startswith("optimizer.") else 0), name)


def compact(batches: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The examples ``batches`` use, and the batches re-indexed into them."""
    used, inverse = np.unique(np.concatenate(batches), return_inverse=True)
    bounds = np.cumsum([0, *map(len, batches)])
    return used, [inverse[a:b] for a, b in itertools.pairwise(bounds)]
