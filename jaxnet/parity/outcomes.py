"""Outcome rows of ``compare``: where its free-running steps cover the inputs at least once (an
epoch over them), the end of the run judged on outcomes, as ``jaxnet parity``'s epoch is
(:func:`jaxnet.parity.epoch.outcome_rows`, the same rows and bounds).

After the steps, both free-running sides predict every input (eval mode) and take the loss on
all of them; predictions differing, accuracy and loss are bounded by K times their spread
between torch and correct torch runs that differ only in arithmetic order: the same steps with
each batch's examples reversed, and (for float32) torch in float64. Predictions are the argmax
of the logits' last axis at every position a target counts (not ``ignore_index``), so they
exist for the classification losses (cross-entropy, NLL) only.

Where a free-running pair left its accumulated bound after a tie or a near-zero gradient (an
explained divergence), those references need not have crossed it: a short run over one batch
can take it in one framework only, and then torch's correct orders agree far more closely
with each other than with a run that went the other way. So one more correct run joins the
references: torch continued from the jax side's state right after that step (every step
before it teacher-forced and within bounds, the step itself explained), over the remaining
steps. Live runs only: a recorded reference cannot hold a state the port reaches later, so
a recorded check's outcome rows keep the two references and say so in their note (there a
port that crosses a tie can fail an outcome row a live compare passes). The run continued
from the jax side tracks it, so after an explained divergence the outcome rows cannot see an
outcome difference smaller than the one that divergence made; every step before and after
is still held by the teacher-forced rows.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from jaxnet import batch
from jaxnet.backends import Backend
from jaxnet.config import OptimConfig
from jaxnet.parity.bundle import Replayer
from jaxnet.parity.epoch import outcome_rows
from jaxnet.parity.forced import OPT, TeacherForced, load
from jaxnet.parity.layers import mode
from jaxnet.parity.report import Row
from jaxnet.parity.sections import Run

NOTE = (
    "after the free-running steps (an epoch or more over the inputs): predictions, accuracy and "
    "loss on every input, in eval mode; floors: torch against torch with each batch's examples "
    "reversed, and torch in the other dtype (float64 rows: its float32 gap times u64/u32, the dtype ladder); "
    "after an explained divergence (a tie, a near-zero gradient), also torch continued from the jax "
    "side's state after that step"
)


def applies(loss, steps: int, batch_size: int | None, n: int) -> bool:
    """Outcome rows where the steps visit every input at least once and the loss classifies."""
    return loss in ("cross_entropy", "nll") and steps > 0 and steps * (batch_size or n) >= n


def port_outcomes(
    setup: Run, recipe: str, opt: OptimConfig, batches: list[np.ndarray], inputs, targets, tf: TeacherForced
) -> list[Row]:
    """The outcome rows of each dtype after ``batches``, from the free-running pairs of ``tf``."""
    ignore = setup.config.ignore_index
    outcomes: dict[tuple[str, str], tuple[np.ndarray, float, float]] = {}

    def measure(backend: Backend) -> tuple[np.ndarray, float, float]:
        x, y = batch.cast(inputs, backend.dtype), batch.cast(targets, backend.dtype)
        with mode([backend], False):
            logits = backend.predict(x)
            loss, _ = backend.loss_and_grads(x, y)
        labels = np.asarray(targets).reshape(-1)
        valid = labels != ignore
        pred = logits.reshape(-1, logits.shape[-1]).argmax(-1)[valid]
        return pred, float(np.mean(pred == labels[valid])), float(loss)

    def trained(
        dtype: str, role: str, order: list[np.ndarray], start: dict | None = None, step: int = 0
    ) -> Backend:
        """torch over ``order``: from the initial weights, or from ``start`` (a combined state) at ``step``."""
        backend = setup.backend("torch", dtype, f"outcome {role}")
        backend.set_optimizer(opt)
        backend.set_train_data(batch.cast(inputs, dtype), batch.cast(targets, dtype))
        if start is not None:
            load(backend, start, step)
        backend.train_steps(order)
        return backend

    reversed_batches = [b[::-1].copy() for b in batches]
    crossed: dict[str, str] = {}  # dtype -> the name of its crossed run
    unjudged: dict[str, str] = {}  # dtype -> why a recorded reference lacks that run
    for dtype, pair in tf.free.items():
        outcomes["jax", dtype] = measure(pair.jax)
        outcomes["torch", dtype] = measure(pair.torch)
        outcomes["torch reversed", dtype] = measure(trained(dtype, "reversed", reversed_batches))
        if pair.crossed is None or not _explained(pair, dtype, tf):
            continue
        if _replayed(pair.torch):
            unjudged[dtype] = (
                "; the port's run crossed a tie (or a near-zero gradient) the recorded torch run did not: "
                "a live compare also judges it against torch continued from the port's state"
            )
        else:
            t, params, optimizer = pair.crossed
            start = params | {OPT + k: v for k, v in optimizer.items()}
            crossed[dtype] = name = f"torch from jax's state after step {t}"
            outcomes[name, dtype] = measure(trained(dtype, "crossed", batches[t:], start, t))
    if "float32" in tf.free and ("torch", "float64") not in outcomes:
        outcomes["torch", "float64"] = measure(trained("float64", "", batches))
    if "float64" in tf.free:
        if ("torch", "float32") not in outcomes:
            outcomes["torch", "float32"] = measure(trained("float32", "", batches))
        outcomes[LADDER, "float64"] = _down_the_ladder(outcomes, setup.factors["float64"])
    section = f"outcome ({len(batches)} steps, free-running)"
    rows = []
    for dtype in tf.free:
        references = [
            ("torch reversed", dtype),
            ("torch", "float64") if dtype == "float32" else (LADDER, dtype),
            *([(crossed[dtype], dtype)] if dtype in crossed else []),
        ]
        rows += [
            replace(_kind(r), note=r.note + unjudged.get(dtype, ""))
            for r in outcome_rows(recipe, dtype, outcomes, references, len(batches), section, "input")
        ]
    return rows


# A float64 outcome's second reference: torch's float32 outcome gap, scaled to float64.
LADDER = "the ladder from torch float32 to"


def _down_the_ladder(outcomes: dict, factor: float) -> tuple[np.ndarray, float, float]:
    """torch's float64 outcome moved by its float32 run's loss gap times ``factor`` (u64 / u32).

    The float32 rows take torch's float64 run as a correct run in other arithmetic; the float64
    rows take the same measurement down the dtype ladder, as every row computed once does
    (rounding error along the same steps is first-order linear in ``u``). The reversed batch
    alone is one sample of a scalar: where every example depends on its batch's statistics
    (BatchNorm), another kernel's order of those sums (the port's) lands farther from torch's
    than one reversal of torch's own, and a ratio of two samples of a scalar is heavy-tailed.
    Predictions and accuracy keep torch's float64 ones (their floors are at least 1)."""
    pred64, acc64, loss64 = outcomes["torch", "float64"]
    loss32 = outcomes["torch", "float32"][2]
    if not np.isfinite(loss32):  # a diverged float32 run is no reference (its gap would pass anything)
        return pred64, acc64, loss64
    return pred64, acc64, loss64 + (loss32 - loss64) * factor


def _explained(pair, dtype: str, tf: TeacherForced) -> bool:
    """The pair's trajectory row passes on an explained divergence (not within bounds throughout)."""
    row = pair.row("", "", dtype, tf.ratios[dtype])
    return row.passed and np.isinf(row.bound)


def _replayed(backend: Backend) -> bool:
    """A recorded reference's torch side: it holds no answers from a state the port reached."""
    return isinstance(backend, Replayer)


def _kind(row: Row) -> Row:
    return replace(row, kind="outcome")
