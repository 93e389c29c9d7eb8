"""What a training run trains on: the batches of every epoch, the evaluation, its printed lines
(numpy only). A family's ``data`` (:mod:`jaxnet.registry`) picks the task.

- :class:`ImageTask`: Fashion-MNIST. An epoch is one pass over the training images in the
  order :func:`jaxnet.data.epoch_order` draws from ``(seed, epoch)``; evaluation is on the
  10,000 test images (the tutorial's Test Error block).
- :class:`TextTask`: the fortunes corpus (:mod:`jaxnet.text`), a stream. An epoch is
  ``epoch_steps`` steps (``--epoch-steps``), each on ``batch_size`` windows of
  ``block_size + 1`` characters at offsets drawn from ``(seed, step)`` (so a resumed run and
  both backends see the same windows); evaluation is the validation split's loss in nats per
  character, over every non-overlapping window (:func:`jaxnet.text.eval_windows`).

Both hand the backend index arrays (``Backend.train_steps``): images' indices, or the
windows' offsets with :func:`TextTask.gather` to cut them.
"""

from __future__ import annotations

import math

import numpy as np

from jaxnet.config import TrainConfig
from jaxnet.data import FashionMNIST, Split, batch_slices, epoch_order


def test_error_block(correct: int, total: int, avg_loss: float) -> str:
    """The tutorial's evaluation output, byte for byte."""
    return f"Test Error: \n Accuracy: {(100 * correct / total):>0.1f}%, Avg loss: {avg_loss:>8f} \n"


class ImageTask:
    """Fashion-MNIST, as the tutorial trains on it."""

    eval_batch = 0  # the training batch size: the tutorial's mean of per-batch means

    gather = None  # a batch is the examples at its indices

    def __init__(self, data: FashionMNIST, cfg: TrainConfig, test_limit: int = 0) -> None:
        self.train_split, self.test = data.train, data.test
        if test_limit:  # evaluate on the first N test images only (quick runs, tests)
            self.test = Split(data.test.images[:test_limit], data.test.labels[:test_limit])
        if cfg.train_limit:
            n = cfg.train_limit
            self.train_split = Split(data.train.images[:n], data.train.labels[:n])
        self.n = len(self.train_split)  # examples an epoch covers
        self.cfg = cfg
        self._slices = batch_slices(self.n, cfg.batch_size)

    @property
    def per_epoch(self) -> int:
        return math.ceil(self.n / self.cfg.batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(self.n, seed=self.cfg.seed, epoch=epoch, shuffle=self.cfg.shuffle)
        return [order[s] for s in self._slices]

    def train_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.train_split.float_images(self.cfg.dtype), self.train_split.labels

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.test.float_images(self.cfg.dtype), self.test.labels

    def report(self, correct: int, loss: float) -> str:
        return test_error_block(correct, len(self.test), loss)

    def metrics(self, correct: int, loss: float) -> dict:
        return {"test_loss": loss, "accuracy": correct / len(self.test), "correct": correct}


class TextTask:
    """The fortunes corpus, character by character (the GPT's)."""

    eval_batch = (
        256  # windows per evaluation forward (the loss is the mean over characters: any size gives it)
    )

    def __init__(self, corpus, cfg: TrainConfig, block_size: int, test_limit: int = 0) -> None:
        self.corpus, self.cfg, self.block_size = corpus, cfg, block_size
        self.test_limit = test_limit  # the first N validation windows only (quick runs, tests)
        self.per_epoch = cfg.epoch_steps
        self.n = self.per_epoch * cfg.batch_size  # windows an epoch covers
        self._val = None

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The offsets of each step's windows, from ``(seed, step)``."""
        from jaxnet import text

        first = epoch * self.per_epoch
        n = len(self.corpus.train)
        return [
            text.offsets(n, self.block_size, self.cfg.batch_size, seed=self.cfg.seed, step=s)
            for s in range(first, first + self.per_epoch)
        ]

    def gather(self, ids: np.ndarray, _unused, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows at ``offsets``: inputs and next-character targets, int64 ``[B, block_size]``."""
        windows = ids[offsets[:, None] + np.arange(self.block_size + 1)]
        return windows[:, :-1], windows[:, 1:]

    def train_arrays(self) -> tuple[np.ndarray, None]:
        return self.corpus.train, None

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        from jaxnet import text

        if self._val is None:
            x, y = text.eval_windows(self.corpus.val, self.block_size)
            self._val = (x[: self.test_limit], y[: self.test_limit]) if self.test_limit else (x, y)
        return self._val

    def report(self, correct: int, loss: float) -> str:
        total = self.eval_arrays()[1].size
        return (
            f"Validation: {loss:.4f} nats/char ({loss / math.log(2):.3f} bits/char), "
            f"next-character accuracy {100 * correct / total:.1f}% \n"
        )

    def metrics(self, correct: int, loss: float) -> dict:
        total = self.eval_arrays()[1].size
        return {"test_loss": loss, "accuracy": correct / total, "correct": correct, "val_nats_per_char": loss}
