"""A training run with either backend: the tutorial's output, checkpoints, resume, metrics.

The loop is backend-neutral: its task (:mod:`jaxnet.tasks`: Fashion-MNIST images, or the
fortunes text) makes the batches (numpy, from the seed), the loop hands them to the backend
100 at a time (one compiled call in JAX), prints the tutorial's lines, evaluates and saves a
checkpoint after every epoch. A checkpoint records the global step, so a run resumed from it,
in either backend, continues the same trajectory.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from jaxnet import checkpoint as ckpt_io
from jaxnet.backends import Backend
from jaxnet.config import ModelConfig, TrainConfig
from jaxnet.data import FashionMNIST
from jaxnet.errors import CheckpointError, TrainingError
from jaxnet.tasks import ImageTask, TextTask, test_error_block  # noqa: F401  (test_error_block: public here)

LOG_EVERY = 100  # the tutorial prints the loss every 100 batches


@dataclass
class EpochMetrics:
    epoch: int
    step: int
    train_loss: float  # mean loss of the batches run in this epoch
    test_loss: float
    accuracy: float
    correct: int
    seconds: float
    samples_per_s: float
    backend: str


class Interrupted(Exception):
    """Ctrl-C during training; ``checkpoint`` is where the state was saved (or None)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step, checkpoint)
        self.step, self.checkpoint = step, checkpoint


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def with_total_steps(cfg: TrainConfig, n: int, per_epoch: int | None = None) -> TrainConfig:
    """Fill ``optimizer.total_steps`` (what the schedules decay over) from the data size (or
    the steps an epoch has)."""
    total = cfg.epochs * (per_epoch or steps_per_epoch(n, cfg.batch_size))
    return replace(cfg, optimizer=replace(cfg.optimizer, total_steps=total))


class _CtrlC:
    """Turns the first SIGINT into a flag the loop checks between chunks; a second one aborts."""

    def __enter__(self) -> _CtrlC:
        self.pressed = False
        self._old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave SIGINT alone
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(
    backend: Backend,
    data: FashionMNIST | ImageTask | TextTask,
    cfg: TrainConfig,
    *,
    save: Path | None = None,
    resume: ckpt_io.Checkpoint | None = None,
    metrics: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> list[EpochMetrics]:
    """Train ``backend`` for ``cfg.epochs`` epochs (counting those in ``resume``) on ``data``
    (Fashion-MNIST, or a :mod:`jaxnet.tasks` task).

    Raises:
        TrainingError: the loss became NaN or inf (the last good checkpoint is kept).
        Interrupted: Ctrl-C; the state was saved to ``save`` first if given.
    """
    task = (
        data if hasattr(data, "epoch_batches") else ImageTask(data, cfg)
    )  # images: anything with train, test
    n, per_epoch = task.n, task.per_epoch
    check_shards(n, cfg.batch_size, backend.shards)
    cfg = with_total_steps(cfg, n, per_epoch)
    writer = backend.rank.writer  # of several processes, one prints, saves and writes metrics
    if not writer:
        save, metrics, log = None, None, _quiet
    step = 0
    if resume is not None:
        check_optimizer_state(resume, cfg)
        backend.load_state_dict(resume.model)
        step = resume.step
    backend.set_optimizer(cfg.optimizer, resume.optimizer if resume else None, step)
    train_x, train_y = task.train_arrays()
    if task.gather is None:
        backend.set_train_data(train_x, train_y)
    else:  # batches are offsets into a stream: the task cuts the windows
        backend.set_train_data(train_x, train_y, gather=task.gather)
    test_x, test_y = task.eval_arrays()
    if metrics is not None and resume is None:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text("")
    show_bar = (sys.stdout.isatty() if progress is None else progress) and writer

    def checkpoint_now(step: int) -> None:
        if save is not None:
            ckpt_io.save(
                save,
                ckpt_io.Checkpoint(
                    model=backend.state_dict(),
                    config=backend.config,
                    optimizer=backend.optimizer_state(),
                    train_config=cfg,
                    epoch=step // per_epoch,
                    step=step,
                    backend=backend.name,
                ),
            )

    history = []
    with _CtrlC() as ctrl_c, _Bar(show_bar) as bar:
        for epoch in range(step // per_epoch, cfg.epochs):
            log(f"Epoch {epoch + 1}\n-------------------------------")
            batches = task.epoch_batches(epoch)
            first = step - epoch * per_epoch  # > 0 when resuming mid-epoch
            bar.start(f"epoch {epoch + 1}/{cfg.epochs}", per_epoch, first)
            start, losses, seen = time.perf_counter(), [], 0
            for lo in range(first, per_epoch, LOG_EVERY):
                hi = min(per_epoch, (lo // LOG_EVERY + 1) * LOG_EVERY)
                chunk = batches[lo:hi]
                chunk_losses = backend.train_steps(chunk)
                if not np.all(np.isfinite(chunk_losses)):
                    bad = lo + int(np.argmin(np.isfinite(chunk_losses)))
                    kept = f"; last good checkpoint kept at {save}" if save and save.exists() else ""
                    raise TrainingError(
                        f"loss is {chunk_losses[bad - lo]} at epoch {epoch + 1}, batch {bad}{kept} "
                        "(try a smaller --lr)"
                    )
                step += len(chunk)
                seen += sum(len(b) for b in chunk)
                losses.append(chunk_losses)
                if lo % LOG_EVERY == 0:
                    current = min((lo + 1) * cfg.batch_size, n)
                    bar.print(log, f"loss: {chunk_losses[0]:>7f}  [{current:>5d}/{n:>5d}]")
                bar.advance(len(chunk), seen / (time.perf_counter() - start))
                if backend.agree(ctrl_c.pressed):  # every process stops after the same chunk
                    checkpoint_now(step)
                    raise Interrupted(step, save)
            seconds = time.perf_counter() - start
            correct, test_loss = backend.evaluate(test_x, test_y, task.eval_batch or cfg.batch_size)
            bar.print(log, task.report(correct, test_loss))
            scores = task.metrics(correct, test_loss)
            row = EpochMetrics(
                epoch=epoch + 1,
                step=step,
                train_loss=float(np.concatenate(losses).mean()),
                test_loss=test_loss,
                accuracy=scores["accuracy"],
                correct=correct,
                seconds=seconds,
                samples_per_s=seen / seconds,
                backend=backend.name,
            )
            history.append(row)
            checkpoint_now(step)
            if metrics is not None:
                with metrics.open("a") as f:
                    f.write(json.dumps(asdict(row) | scores) + "\n")
    log("Done!")
    return history


def _quiet(line: str) -> None:
    pass


def check_shards(n: int, batch_size: int, shards: int) -> None:
    """Every batch, the last short one too, must split evenly over ``shards`` devices or
    processes: then each computes the mean over an equal share, and their mean is the batch's.

    Raises:
        TrainingError: naming the batch that does not divide.
    """
    if shards <= 1:
        return
    last = n % batch_size or batch_size
    for size, which in ((batch_size, "--batch-size"), (last, f"the last batch of an epoch of {n}")):
        if size % shards:
            raise TrainingError(
                f"{which} has {size} examples, which do not divide among {shards} devices "
                "(pick a batch size and --train-limit that do)"
            )


class _Bar:
    """A rich progress bar (rate, ETA) when wanted; a no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>8.0f} samples/s"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = None
        return self

    def start(self, description: str, total: int, completed: int) -> None:
        if self.enabled:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(description, total=total, completed=completed, rate=0.0)

    def advance(self, n: int, rate: float) -> None:
        if self.enabled:
            self._progress.update(self._task, advance=n, rate=rate)

    def print(self, log: Callable[[str], None], line: str) -> None:
        if self.enabled:
            self._progress.console.print(line, highlight=False, markup=False)
        else:
            log(line)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.stop()


def check_optimizer_state(ckpt: ckpt_io.Checkpoint, cfg: TrainConfig) -> None:
    """A resume past step 0 with an optimizer that keeps state needs that state: without it the
    run would go on with a fresh optimizer, silently off the trajectory it claims to continue.

    Raises:
        CheckpointError: naming the optimizer, the step and the state that is missing.
    """
    names = cfg.optimizer.state_names
    if ckpt.step > 0 and names and not ckpt.optimizer:
        raise CheckpointError(
            f"no optimizer state to resume {cfg.optimizer.name} at step {ckpt.step} "
            f"({', '.join(names)} of every parameter)"
        )


def check_resume(ckpt: ckpt_io.Checkpoint, config: ModelConfig, cfg: TrainConfig) -> None:
    """A resumed run must use the checkpoint's model; the dtype must match its tensors."""
    check_optimizer_state(ckpt, cfg)
    if ckpt.config != config:
        raise CheckpointError(f"checkpoint model {ckpt.config} differs from the requested {config}")
    if str(ckpt.dtype) != cfg.dtype:
        raise CheckpointError(f"checkpoint holds {ckpt.dtype} weights but --dtype is {cfg.dtype}")
