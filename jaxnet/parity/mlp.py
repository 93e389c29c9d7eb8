"""``jaxnet parity`` for the tutorial MLP: whether, where and by how much jax and torch disagree.

Both frameworks get the same weights and the same real Fashion-MNIST batches; torch is the
reference. Every row is judged against a noise floor measured in this run (see
:mod:`jaxnet.parity.verdict`):

- forward: every layer's output, the ReLU masks (flips only at ties), the softmax, the loss;
- gradient: every parameter's gradient;
- probe: the gradient where pre-activations are exactly 0 (ReLU's derivative at 0), the loss
  on logits far beyond exp's range (log-softmax stability);
- step: N optimizer steps per recipe, teacher-forced (both sides step from torch's state);
- trajectory: the same N steps free-running, the divergence explained or failed;
- epoch: one free-running epoch, its end judged on outcomes (test predictions, accuracy,
  loss) against two correct torch runs that differ only in arithmetic order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from jaxnet import checkpoint
from jaxnet.config import RECIPES, ModelConfig, OptimConfig
from jaxnet.data import FashionMNIST, batch_slices, epoch_order
from jaxnet.parity import environment, verdict
from jaxnet.parity.report import Report, Row
from jaxnet.parity.sections import BATCH, Run, epoch_section, steps_section

EXTREME_SCALE = 1e4  # last-layer scale for the log-softmax probe: logit gaps of ~1e3


@contextlib.contextmanager
def session(
    state: dict[str, np.ndarray],
    *,
    config: ModelConfig | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
    matmul_precision: str = "highest",
    reverse_batches: bool = False,
) -> Iterator[tuple[Run, dict[str, str]]]:
    """The backends of one parity run (:class:`Run`) and its environment, inside the matmul
    precision asked for (restored after).

    For speed, call ``jaxnet.process.prepare(shared=True)`` before torch is first imported:
    the two frameworks' threads then sleep instead of spinning while the other computes.
    """
    dtypes = tuple(d for d in ("float32", "float64") if d in dtypes)
    with environment.matmul_precision(matmul_precision, device) as arithmetic:
        factors = {d: verdict.ladder_factor(d, arithmetic.coarsest, arithmetic.torch) for d in dtypes}
        setup = Run(config or ModelConfig(), dtypes, device, state, factors, reverse_batches)
        env = environment.describe(
            setup.backend("jax", dtypes[0]), setup.backend("torch", "float32"), arithmetic
        )
        env["verdict"] = f"err <= K x measured floor, K = {verdict.K:g}"
        yield setup, env


def run(
    data: FashionMNIST,
    *,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    steps: int = 100,
    recipes: tuple[str, ...] = tuple(RECIPES),
    epoch_recipe: str | None = "sgd",
    device: str = "auto",
    matmul_precision: str = "highest",
    seed: int = 0,
    config: ModelConfig | None = None,
    train_limit: int = 0,
    reverse_batches: bool = False,
) -> Report:
    """Every comparison of the report, float32 rows before float64 rows in each section."""
    start = time.perf_counter()
    config = config or ModelConfig()
    state = checkpoint.init_state_dict(config, seed)
    options = {"config": config, "dtypes": dtypes, "device": device, "matmul_precision": matmul_precision}
    with session(state, reverse_batches=reverse_batches, **options) as (setup, env):
        report = Report(rows=[], environment=env)
        x, y = data.train.float_images()[:BATCH], data.train.labels[:BATCH]
        if reverse_batches:  # the same examples, every batch reduction in the other order
            x, y = x[::-1].copy(), y[::-1].copy()
        report.rows += forward_and_gradient(setup, x, y)
        report.rows += probes(setup, x, y)
        images = data.train.float_images()
        n = min(train_limit or len(images), len(images))
        order = epoch_order(n, seed=seed, epoch=0)
        forced = {}  # recipe -> its teacher-forced run
        for name in recipes:
            opt = replace(RECIPES[name], total_steps=min(steps, len(batch_slices(n, BATCH))))
            batches = setup.batches(order, n)[:steps]
            rows, forced[name], histories = steps_section(
                setup, name, opt, batches, images, data.train.labels
            )
            report.rows += rows
            report.histories |= histories
        if epoch_recipe is not None:
            report.rows += epoch_section(setup, epoch_recipe, setup.batches(order, n), images, data, forced)
    report.seconds = time.perf_counter() - start
    return report


def training(
    images: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    opt: OptimConfig,
    *,
    dtypes: tuple[str, ...] = ("float32",),
    state: dict[str, np.ndarray] | None = None,
    config: ModelConfig | None = None,
    device: str = "auto",
    label: str = "recipe",
) -> Report:
    """Any recipe's steps on any batches, teacher-forced and free-running, as report rows.

    Args:
        images, labels: the training examples ``[N, 1, 28, 28]`` float32 and ``[N]``.
        batches: the example indices of each step, in order.
        opt: the recipe (``total_steps`` set if it has a schedule).
        state: float32 initial weights in torch layout (default: ``init_state_dict(config, 0)``).

    Example:
        >>> opt = OptimConfig(lr=0.1)                                        # doctest: +SKIP
        >>> batches = [np.arange(i, i + 64) for i in range(0, 6400, 64)]     # doctest: +SKIP
        >>> report = training(images, labels, batches, opt)                  # doctest: +SKIP
        >>> report.passed                                                    # doctest: +SKIP
        True
    """
    start = time.perf_counter()
    config = config or ModelConfig()
    state = state or checkpoint.init_state_dict(config, 0)
    with session(state, config=config, dtypes=dtypes, device=device) as (setup, env):
        rows, _, histories = steps_section(setup, label, opt, batches, images, labels)
    return Report(rows, env, histories, time.perf_counter() - start)


def forward(
    x: np.ndarray,
    y: np.ndarray,
    *,
    state: dict[str, np.ndarray] | None = None,
    config: ModelConfig | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
) -> list[Row]:
    """The forward and gradient rows for given float32 weights (torch layout) and batch."""
    config = config or ModelConfig()
    state = state or checkpoint.init_state_dict(config, 0)
    with session(state, config=config, dtypes=dtypes, device=device) as (setup, _):
        return forward_and_gradient(setup, x, y)


def forward_and_gradient(setup: Run, x: np.ndarray, y: np.ndarray) -> list[Row]:
    """Every layer's output, the ReLU masks, the loss and every gradient on one batch."""
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
    rows: dict[str, list[Row]] = {"forward": [], "gradient": []}
    x64 = x.astype(np.float64)
    acts32, acts64 = ref.activations(x), ref64.activations(x64)
    for dtype, side in sides.items():
        acts_t = acts32 if dtype == "float32" else acts64
        acts_j = side.activations(x.astype(dtype))
        floors = {k: verdict.ladder_floor(acts32[k], acts64[k], dtype, setup.factors[dtype]) for k in acts32}
        for name in acts_j:
            rows["forward"].append(
                verdict.normwise("forward", name, dtype, acts_j[name], acts_t[name], floors[name])
            )
        names = setup.config.relu_inputs
        tied, counts = verdict.tied_examples(acts_j, acts_t, acts32, acts64, names, floors)  # left out below
        for name, (flips, ties) in counts.items():
            quantity = f"ReLU mask after {name}: {flips} flip(s), {ties} at ties"
            rows["forward"].append(
                verdict.count("forward", quantity, dtype, flips - ties, 0, 0, "flips away from a tie")
            )
        keep = np.array([i for i in range(len(y)) if i not in tied], dtype=np.int64)
        note = f"{len(tied)} example(s) with a ReLU tie left out" if tied else ""
        loss32, g32 = ref.loss_and_grads(x[keep], y[keep])
        loss64, g64 = ref64.loss_and_grads(x64[keep], y[keep])
        loss_j, g_j = side.loss_and_grads(x[keep].astype(dtype), y[keep])
        loss_t, g_t = (loss32, g32) if dtype == "float32" else (loss64, g64)
        floor = verdict.ladder_floor(np.float64(loss32), np.float64(loss64), dtype, setup.factors[dtype])
        rows["forward"].append(
            verdict.normwise("forward", "loss", dtype, np.float64(loss_j), np.float64(loss_t), floor, note)
        )
        for name in g_j:
            floor = verdict.ladder_floor(g32[name], g64[name], dtype, setup.factors[dtype])
            rows["gradient"].append(
                verdict.normwise("gradient", name, dtype, g_j[name], g_t[name], floor, note)
            )
    return rows["forward"] + rows["gradient"]


def probes(setup: Run, x: np.ndarray, y: np.ndarray) -> list[Row]:
    """Inputs at the edges: ReLU exactly at 0, and logits far beyond exp's range."""
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
    rows = []
    everyone = [ref, ref64, *sides.values()]
    zero_bias = {k: (np.zeros_like(v) if k.endswith("bias") else v) for k, v in setup.state.items()}
    zero, last = np.zeros((1, *x.shape[1:]), x.dtype), setup.config.logits_name
    extreme = {
        k: (v * np.float32(EXTREME_SCALE) if k.startswith(last + ".") else v) for k, v in setup.state.items()
    }
    for weights, probe in ((zero_bias, "relu"), (extreme, "extreme")):
        for backend in everyone:
            backend.load_state_dict({k: v.astype(backend.dtype) for k, v in weights.items()})
        xs, ys = (zero, y[:1]) if probe == "relu" else (x, y)
        loss32, g32 = ref.loss_and_grads(xs, ys)
        loss64, g64 = ref64.loss_and_grads(xs.astype(np.float64), ys)
        for dtype, side in sides.items():
            loss_j, g_j = side.loss_and_grads(xs.astype(dtype), ys)
            f = setup.factors[dtype]
            if probe == "relu":  # every pre-activation is exactly 0: relu'(0) decides these
                g_t = g32 if dtype == "float32" else g64
                for name in g_j:
                    floor = verdict.ladder_floor(g32[name], g64[name], dtype, f)
                    rows.append(
                        verdict.normwise(
                            "probe", f"relu'(0): grad {name}", dtype, g_j[name], g_t[name], floor
                        )
                    )
            else:
                loss_t = loss32 if dtype == "float32" else loss64
                floor = verdict.ladder_floor(np.float64(loss32), np.float64(loss64), dtype, f)
                quantity = f"loss at extreme logits (x{EXTREME_SCALE:g})"
                rows.append(
                    verdict.normwise("probe", quantity, dtype, np.float64(loss_j), np.float64(loss_t), floor)
                )
    for backend in everyone:
        backend.load_state_dict(setup.weights(backend.dtype))
    return sorted(rows, key=lambda r: r.dtype != "float32")
