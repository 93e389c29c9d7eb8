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

import itertools
import time
from dataclasses import dataclass, replace

import numpy as np

from jaxnet import checkpoint, process
from jaxnet.backends import Backend, get_backend
from jaxnet.config import RECIPES, ModelConfig, OptimConfig
from jaxnet.data import FashionMNIST, batch_slices, epoch_order
from jaxnet.numerics import rel_error, unit_roundoff
from jaxnet.parity import environment, verdict
from jaxnet.parity.forced import Sides, teacher_forced
from jaxnet.parity.free import FreePair
from jaxnet.parity.report import Report, Row

BATCH = 64
EXTREME_SCALE = 1e4  # last-layer scale for the log-softmax probe: logit gaps of ~1e3
TF_SAMPLE = 10  # teacher-forced steps measured for an epoch recipe not among the step rows


@dataclass
class Run:
    """The backends and settings of one parity run."""

    config: ModelConfig
    dtypes: tuple[str, ...]
    device: str
    state: dict[str, np.ndarray]  # float32 initial weights (float64 runs use them upcast)
    factors: dict[str, float]  # dtype -> scale of the float32 floor to that dtype
    reverse: bool  # each batch's examples in reverse order (another reduction order)

    def __post_init__(self) -> None:
        self._made: dict[tuple[str, str, str], Backend] = {}

    def backend(self, name: str, dtype: str, role: str = "") -> Backend:
        """The backend for ``role``, made once per run and reset to the initial weights."""
        key = (name, dtype, role)
        if key not in self._made:
            self._made[key] = get_backend(
                name, self.config, dtype=dtype, device=self.device, state=self.weights(dtype)
            )
        else:
            self._made[key].load_state_dict(self.weights(dtype))
        return self._made[key]

    def weights(self, dtype: str) -> dict[str, np.ndarray]:
        return {k: v.astype(dtype) for k, v in self.state.items()}

    def batches(self, order: np.ndarray, n: int) -> list[np.ndarray]:
        out = [order[s] for s in batch_slices(n, BATCH)]
        return [b[::-1].copy() for b in out] if self.reverse else out


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
    process.prepare(shared=True)  # before torch loads, if it has not yet
    config = config or ModelConfig()
    dtypes = tuple(d for d in ("float32", "float64") if d in dtypes)
    with environment.matmul_precision(matmul_precision, device) as arithmetic:
        factors = {d: verdict.ladder_factor(d, arithmetic.coarsest, arithmetic.torch) for d in dtypes}
        setup = Run(
            config, dtypes, device, checkpoint.init_state_dict(config, seed), factors, reverse_batches
        )
        ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
        sides = {d: setup.backend("jax", d) for d in dtypes}
        report = Report(rows=[], environment=environment.describe(sides[dtypes[0]], ref, arithmetic))
        report.environment["verdict"] = f"err <= K x measured floor, K = {verdict.K:g}"
        x, y = data.train.float_images()[:BATCH], data.train.labels[:BATCH]
        report.rows += forward_and_gradient(setup, ref, ref64, sides, x, y)
        report.rows += probes(setup, ref, ref64, sides, x, y)
        images = data.train.float_images()
        n = min(train_limit or len(images), len(images))
        order = epoch_order(n, seed=seed, epoch=0)
        forced = {}  # recipe -> its teacher-forced run
        for name in recipes:
            opt = replace(RECIPES[name], total_steps=min(steps, len(batch_slices(n, BATCH))))
            rows, forced[name], histories = steps_section(
                setup, name, opt, setup.batches(order, n)[:steps], images, data.train.labels
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
    process.prepare(shared=True)
    config = config or ModelConfig()
    dtypes = tuple(d for d in ("float32", "float64") if d in dtypes)
    with environment.matmul_precision("highest", device) as arithmetic:
        factors = {d: verdict.ladder_factor(d, arithmetic.coarsest, arithmetic.torch) for d in dtypes}
        setup = Run(config, dtypes, device, state or checkpoint.init_state_dict(config, 0), factors, False)
        rows, _, histories = steps_section(setup, label, opt, batches, images, labels)
        env = environment.describe(
            setup.backend("jax", dtypes[0]), setup.backend("torch", "float32"), arithmetic
        )
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
    process.prepare(shared=True)
    config = config or ModelConfig()
    dtypes = tuple(d for d in ("float32", "float64") if d in dtypes)
    with environment.matmul_precision("highest", device) as arithmetic:
        factors = {d: verdict.ladder_factor(d, arithmetic.coarsest, arithmetic.torch) for d in dtypes}
        setup = Run(config, dtypes, device, state or checkpoint.init_state_dict(config, 0), factors, False)
        ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
        return forward_and_gradient(setup, ref, ref64, {d: setup.backend("jax", d) for d in dtypes}, x, y)


def forward_and_gradient(setup: Run, ref, ref64, sides, x, y) -> list[Row]:
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
        tied: set[int] = set()  # examples whose gradient legitimately differs: left out below
        for name in setup.config.relu_inputs:
            flips, at_tie = verdict.relu_ties(acts_j[name], acts_t[name], floors[name])
            reference_flips, _ = verdict.relu_ties(acts32[name], acts64[name], floors[name])
            tied |= {int(b) for (b, _), tie in zip(flips, at_tie, strict=True) if tie}
            tied |= {int(b) for b, _ in reference_flips}
            ties = int(np.sum(at_tie))
            quantity = f"ReLU mask after {name}: {len(flips)} flip(s), {ties} at ties"
            rows["forward"].append(
                verdict.count("forward", quantity, dtype, len(flips) - ties, 0, 0, "flips away from a tie")
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


def probes(setup: Run, ref, ref64, sides, x, y) -> list[Row]:
    """Inputs at the edges: ReLU exactly at 0, and logits far beyond exp's range."""
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


def steps_section(setup: Run, recipe: str, opt: OptimConfig, batches, images, labels):
    """Teacher-forced rows and free-running trajectory rows for one recipe.

    Returns the rows, the teacher-forced run (its per-step allowances and gradient floors
    serve the epoch's free-running pair) and the series to plot.
    """
    used, batches = _compact(batches)  # only the examples these steps touch go on the devices
    images, labels = images[used], labels[used]
    relu_inputs = setup.config.relu_inputs
    sides = Sides(
        setup.backend("torch", "float32", "reference"),
        setup.backend("torch", "float64", "floor"),
        setup.backend("torch", "float32", "spare"),
        {d: setup.backend("jax", d, "teacher-forced") for d in setup.dtypes},
        relu_inputs,
    )
    eps = opt.eps if opt.name in ("adam", "adamw") else 0.0
    free = {
        d: FreePair(setup.backend("jax", d, "free"), sides.ref if d == "float32" else setup.backend("torch", d, "free"),
                    relu_inputs, eps=eps, own_torch=d != "float32")
        for d in setup.dtypes
    }  # fmt: skip
    everyone = [sides.ref, sides.ref64, sides.spare, *sides.jax.values()]
    everyone += [b for p in free.values() for b in (p.jax, p.torch)]
    for backend in {id(b): b for b in everyone}.values():
        backend.set_optimizer(opt)
        backend.set_train_data(images.astype(backend.dtype), labels)
    tf = teacher_forced(sides, batches, images, labels, setup.factors, free)
    order = {name: i for i, name in enumerate(setup.config.param_shapes())}  # torch's order, then buffers
    keyed = sorted(tf.rows.items(), key=lambda kv: (kv[0][0] != "float32", _tensor_order(kv[0][1], order)))
    rows = [replace(row, quantity=f"{recipe}: {name}") for (_, name), row in keyed]
    for dtype, pair in free.items():
        rows.append(pair.row(f"trajectory ({len(batches)}, free-running)", recipe, dtype))
    histories = {
        f"{d} {recipe}": {"gap": p.gaps, "bound": p.bounds, "ratio": tf.ratios[d]} for d, p in free.items()
    }
    return rows, tf, histories


def _tensor_order(name: str, order: dict[str, int]) -> tuple[int, str]:
    param = name.removeprefix("optimizer.").rsplit(".", 1)[0] if name.startswith("optimizer.") else name
    return (order.get(param, len(order)) + (len(order) if name.startswith("optimizer.") else 0), name)


def _compact(batches: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The examples ``batches`` use, and the batches re-indexed into them."""
    used, inverse = np.unique(np.concatenate(batches), return_inverse=True)
    bounds = np.cumsum([0, *map(len, batches)])
    return used, [inverse[a:b] for a, b in itertools.pairwise(bounds)]


def epoch_section(setup: Run, recipe: str, batches, images, data, forced: dict) -> list[Row]:
    """One epoch, free-running; its divergence explained, its end judged on outcomes.

    The per-step allowance and gradient floors are the largest the teacher-forced steps of
    the same recipe measured (on the first steps, if the recipe had no step rows).
    """
    opt = replace(RECIPES[recipe], total_steps=len(batches))
    if recipe not in forced:
        forced[recipe] = steps_section(setup, recipe, opt, batches[:TF_SAMPLE], images, data.train.labels)[1]
    tf = forced[recipe]
    used, batches = _compact(batches)
    images, labels = images[used], data.train.labels[used]
    train_x = {d: images.astype(d) for d in ("float32", "float64")}
    test_x, test_y = data.test.float_images(), data.test.labels
    eps = opt.eps if opt.name in ("adam", "adamw") else 0.0
    outcomes: dict[tuple[str, str], tuple[np.ndarray, float, float]] = {}
    rows = []

    def trained(name: str, dtype: str, role: str) -> Backend:
        backend = setup.backend(name, dtype, f"epoch {role}")
        backend.set_optimizer(opt)
        backend.set_train_data(train_x[dtype], labels)
        return backend

    def outcome(backend: Backend) -> tuple[np.ndarray, float, float]:
        x = test_x.astype(backend.dtype)
        correct, loss = backend.evaluate(x, test_y)
        return backend.predict(x).argmax(1), correct / len(test_y), loss

    for dtype in sorted(set(setup.dtypes) | {"float64"}):
        torch_side = trained("torch", dtype, "")
        if dtype in setup.dtypes:
            pair = FreePair(trained("jax", dtype, ""), torch_side, setup.config.relu_inputs, eps=eps)
            allowance = max(tf.allowance[dtype])
            for t, idx in enumerate(batches, start=1):
                pair.before(train_x[dtype][idx], labels[idx])
                pair.step(idx)
                pair.after(t, allowance, tf.noise[dtype])
            rows.append(
                pair.row(f"epoch ({len(batches)} steps, free-running)", f"{recipe}: trajectory", dtype)
            )
            outcomes["jax", dtype] = outcome(pair.jax)
        else:
            torch_side.train_steps(batches)
        outcomes["torch", dtype] = outcome(torch_side)
        reversed_run = trained("torch", dtype, "reversed")
        reversed_run.train_steps([b[::-1].copy() for b in batches])
        outcomes["torch reversed", dtype] = outcome(reversed_run)
    for dtype in setup.dtypes:
        references = [("torch reversed", dtype)] + ([("torch", "float64")] if dtype == "float32" else [])
        rows += outcome_rows(recipe, dtype, outcomes, references, len(batches))
    return sorted(rows, key=lambda r: r.dtype != "float32")


def outcome_rows(recipe, dtype, outcomes, references, steps) -> list[Row]:
    """jax against torch after the epoch, each measure bounded by K times its largest value
    between torch and a correct torch run that differs only in arithmetic order."""
    section = f"epoch ({steps} steps, free-running)"
    pred, acc, loss = outcomes["torch", dtype]
    pred_j, acc_j, loss_j = outcomes["jax", dtype]
    spread = [outcomes[r] for r in references]
    names = ", ".join(f"{n} {d}" for n, d in references)
    found = int(np.sum(pred_j != pred))
    floor = max(int(np.sum(p != pred)) for p, _, _ in spread)
    rows = [verdict.count(section, f"{recipe}: test predictions differing: {found} of {len(pred)}", dtype, found,
                          floor, int(verdict.K * max(floor, 1)), f"floor: torch against {names}; at least 1 (a count)")]  # fmt: skip
    one = 1.0 / len(pred)  # accuracy resolves one image
    floor = max(max(abs(a - acc) for _, a, _ in spread), one)
    rows.append(Row(section, f"{recipe}: test accuracy {acc_j:.2%} / {acc:.2%}", dtype, abs(acc_j - acc), floor,
                    verdict.K * floor, abs(acc_j - acc) <= verdict.K * floor, None, f"floor: torch against {names}"))  # fmt: skip
    floor = max(max(rel_error(np.float64(l_), np.float64(loss)) for _, _, l_ in spread), unit_roundoff(dtype))
    err = rel_error(np.float64(loss_j), np.float64(loss))
    rows.append(Row(section, f"{recipe}: test loss {loss_j:.6f} / {loss:.6f}", dtype, err, floor, verdict.K * floor,
                    err <= verdict.K * floor, None, f"floor: torch against {names}"))  # fmt: skip
    return rows
