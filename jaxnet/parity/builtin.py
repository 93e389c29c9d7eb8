"""``jaxnet parity`` for the built-in pairs (the tutorial MLP, the CNN): whether, where and by
how much jax and torch disagree.

Both frameworks get the same weights and the same real Fashion-MNIST batches; torch is the
reference. Every row is judged against a noise floor measured in this run (see
:mod:`jaxnet.parity.verdict`):

- forward: every layer's output, the ReLU masks and max-pool choices (flips only at ties),
  the softmax, the loss; for the CNN once in eval mode and once in train mode with the same
  dropout masks given to both sides;
- gradient: every parameter's gradient (in both modes for the CNN);
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
from dataclasses import dataclass, replace

import numpy as np

from jaxnet import checkpoint, registry
from jaxnet.config import ALL_RECIPES, AnyModel, ModelConfig, OptimConfig
from jaxnet.data import FashionMNIST, batch_slices, epoch_order
from jaxnet.parity import environment, epoch, pool, verdict
from jaxnet.parity.free import on_cpu
from jaxnet.parity.layers import DROPOUT_NOTE, forward_and_gradient, shared_masks
from jaxnet.parity.probes import probes
from jaxnet.parity.report import Report, Row
from jaxnet.parity.sections import BATCH, Run, steps_section

# the families this report runs (the built-in engine's); ``parity.compare`` takes any pair
MODELS = registry.BUILTIN


@contextlib.contextmanager
def session(
    state: dict[str, np.ndarray],
    *,
    config: AnyModel | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
    matmul_precision: str = "highest",
    reverse_batches: bool = False,
    modules: dict[str, object] | None = None,
    factory=None,
    recorded: dict | None = None,
) -> Iterator[tuple[Run, dict[str, str]]]:
    """The backends of one parity run (:class:`Run`) and its environment, inside the matmul
    precision asked for (restored after).

    For speed, call ``jaxnet.process.prepare(shared=True)`` before torch is first imported:
    the two frameworks' threads then sleep instead of spinning while the other computes.
    """
    dtypes = tuple(d for d in ("float32", "float64") if d in dtypes)
    precision = environment.matmul_precision if recorded is None else environment.jax_matmul_precision
    extra = {} if recorded is None else {"recorded": recorded}
    with precision(matmul_precision, device, **extra) as arithmetic:
        factors = {d: verdict.ladder_factor(d, arithmetic.coarsest, arithmetic.torch) for d in dtypes}
        setup = Run(
            config or ModelConfig(), dtypes, device, state, factors, reverse_batches, modules or {}, factory
        )
        sides = setup.backend("jax", dtypes[0]), setup.backend("torch", "float32")
        if recorded is None:
            env = environment.describe(*sides, arithmetic)
        else:
            env = environment.describe_recorded(sides[0], recorded, arithmetic)
        env["verdict"] = f"err <= K x measured floor, K = {verdict.K:g}"
        yield setup, env


def run(
    data: FashionMNIST,
    *,
    model: str = "mlp",
    dtypes: tuple[str, ...] = ("float32", "float64"),
    steps: int = 100,
    recipes: tuple[str, ...] | None = None,
    epoch_recipe: str | None = "sgd",
    device: str = "auto",
    matmul_precision: str = "highest",
    seed: int = 0,
    config: AnyModel | None = None,
    train_limit: int = 0,
    reverse_batches: bool = False,
    workers: int | None = 1,
) -> Report:
    """Every comparison of the report, float32 rows before float64 rows in each section.

    ``model``: ``"mlp"`` (the tutorial's) or ``"cnn"`` (``examples/mnist``'s); ``recipes`` and
    ``epoch_recipe`` name recipes of ``ALL_RECIPES`` (default: the model's own). ``workers``:
    processes that run the step and epoch sections (None: :func:`pool.auto`, one per core on
    CPU); each builds its own backends, so a function patched in this process (a planted
    fault) is not patched there: run those with one. Workers are spawned, and spawning
    imports the calling script again: a script that asks for them keeps its work under
    ``if __name__ == "__main__":``.
    """
    start = time.perf_counter()
    family = registry.family(model)
    config = config or family.config()
    state = checkpoint.init_state_dict(config, seed)
    options = {"config": config, "dtypes": dtypes, "device": device, "matmul_precision": matmul_precision,
               "reverse_batches": reverse_batches}  # fmt: skip
    with session(state, **options) as (setup, env):
        report = Report(rows=[], environment=env)
        if config.dropouts:
            env["dropout"] = DROPOUT_NOTE
        job = _Job(tuple(family.recipes) if recipes is None else recipes, epoch_recipe, steps, seed,
                   min(train_limit or len(data.train), len(data.train)), setup.dtypes)  # fmt: skip
        if workers is None:
            sides = setup.backend("jax", setup.dtypes[0]), setup.backend("torch", "float32")
            workers = pool.auto(job.lengths(), all(map(on_cpu, sides)))
        here = None if workers > 1 else pool.Context(setup, data, data.train.float_images())
        if workers > 1:
            env["processes"] = pool.describe(workers)
        begin = pool.Start(options, state, data.train, data.test)
        with pool.Pool(workers, begin, here) as sections:
            # what the epoch's runs wait for first (its recipe's allowance), so that they start early
            first = [epoch_recipe] if epoch_recipe in job.recipes else []
            forced = {name: sections.submit(_steps, job, name) for name in first}
            sampled = sections.submit(_sample, job) if epoch_recipe is not None else None
            forced |= {name: sections.submit(_steps, job, name) for name in job.recipes if name not in first}
            report.rows += _forward_rows(
                setup, data, config, seed, reverse_batches
            )  # with workers: meanwhile
            if sampled is not None:
                allowance = forced.get(epoch_recipe, sampled).result()[-1]
                epochs = [
                    sections.submit(_epoch, job, d, allowance) for d in epoch.epoch_dtypes(setup.dtypes)
                ]
            for name in job.recipes:
                rows, histories, _ = forced[name].result()
                report.rows += rows
                report.histories |= histories
            if sampled is not None:
                runs = [r.result() for r in epochs]
                report.rows += epoch.rows(
                    epoch_recipe, setup.dtypes, job.epoch_steps(), sampled.result()[0], runs
                )
    report.seconds = time.perf_counter() - start
    return report


@dataclass(frozen=True)
class _Job:
    """What every section of one report shares (sent to the workers)."""

    recipes: tuple[str, ...]
    epoch_recipe: str | None
    steps: int
    seed: int
    n: int  # the training examples the epoch runs over
    dtypes: tuple[str, ...]

    def epoch_steps(self) -> int:
        return len(batch_slices(self.n, BATCH))

    def lengths(self) -> list[int]:
        """The steps of each section: each recipe's, and each dtype's epoch."""
        epochs = len(epoch.epoch_dtypes(self.dtypes)) if self.epoch_recipe else 0
        return [min(self.steps, self.epoch_steps())] * len(self.recipes) + [self.epoch_steps()] * epochs

    def opt(self, name: str, total_steps: int) -> OptimConfig:
        return replace(ALL_RECIPES[name], total_steps=total_steps)

    def batches(self, setup: Run) -> list[np.ndarray]:
        return setup.batches(epoch_order(self.n, seed=self.seed, epoch=0), self.n)


def _forward_rows(setup: Run, data, config: AnyModel, seed: int, reverse: bool) -> list[Row]:
    """The forward, gradient and probe rows, on the first batch of the training split."""
    x, y = data.train[:BATCH].float_images(), data.train.labels[:BATCH]
    if reverse:  # the same examples, every batch reduction in the other order
        x, y = x[::-1].copy(), y[::-1].copy()
    rows = forward_and_gradient(setup, x, y)
    if config.dropouts:  # train mode, the same draw on both sides
        rows += forward_and_gradient(setup, x, y, shared_masks(setup, x, seed))
    return rows + probes(setup, x, y)


def _steps(here: pool.Context, job: _Job, name: str):
    """One recipe's teacher-forced and free-running steps: rows, series and allowance."""
    batches = job.batches(here.setup)
    opt = job.opt(name, min(job.steps, len(batches)))
    rows, forced, histories = steps_section(
        here.setup, name, opt, batches[: job.steps], here.images, here.data.train.labels
    )
    return rows, histories, epoch.Allowance.of(forced)


def _sample(here: pool.Context, job: _Job):
    batches = job.batches(here.setup)
    opt = job.opt(job.epoch_recipe, len(batches))
    return epoch.sample(here.setup, job.epoch_recipe, opt, batches, here.images, here.data.train.labels)


def _epoch(here: pool.Context, job: _Job, dtype: str, allowance: epoch.Allowance):
    batches = job.batches(here.setup)
    opt = job.opt(job.epoch_recipe, len(batches))
    return epoch.run_dtype(
        here.setup, job.epoch_recipe, opt, batches, here.images, here.data, dtype, allowance
    )


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
