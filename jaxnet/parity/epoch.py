"""The free-running epoch of ``jaxnet parity``: its divergence explained, its end judged on outcomes.

Three parts, so that the report can run them in separate processes (:mod:`jaxnet.parity.pool`):
:func:`sample` (the epoch's first steps and its last, short batch, teacher-forced),
:func:`run_dtype` (one dtype's free-running pair and the torch runs its outcomes are bounded
by) and :func:`rows` (the outcome rows, once every dtype has run). ``jaxnet.parity.builtin.run``
runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from jaxnet.backends import Backend
from jaxnet.config import OptimConfig
from jaxnet.numerics import rel_error, unit_roundoff
from jaxnet.parity import verdict
from jaxnet.parity.free import FreePair
from jaxnet.parity.report import Row
from jaxnet.parity.sections import Run, compact, normalising_eps, steps_section

TF_SAMPLE = 3  # an epoch's first steps teacher-forced (with its last batch)

# (run, dtype) -> (test predictions, accuracy, loss); runs "jax", "torch", "torch reversed"
Outcomes = dict[tuple[str, str], tuple[np.ndarray, float, float]]


@dataclass(frozen=True)
class Allowance:
    """What a free-running pair is held to, from a teacher-forced run of the same recipe, per
    dtype: the largest per-step allowance (normwise) and each gradient's largest floor."""

    step: dict[str, float]
    noise: dict[str, dict[str, float]]

    @classmethod
    def of(cls, forced) -> Allowance:
        """From a :class:`~jaxnet.parity.forced.TeacherForced` run."""
        return cls({d: max(a) for d, a in forced.allowance.items()}, dict(forced.noise))


def sample(setup: Run, recipe: str, opt: OptimConfig, batches, images, labels) -> tuple[list[Row], Allowance]:
    """The epoch's first steps and its last, short batch (60000 % 64 = 32 examples),
    teacher-forced: steps the free-running run alone would judge only by outcomes. Returns their
    rows and their allowance, which the epoch's runs are held to where its recipe has no step
    rows of its own (with them, the longer run's)."""
    picked = batches[:TF_SAMPLE] + batches[-1:]
    found, forced, _ = steps_section(setup, recipe, opt, picked, images, labels)
    section = f"epoch sample ({len(picked)} steps, teacher-forced)"
    return [replace(r, section=section) for r in found if r.section.startswith("step")], Allowance.of(forced)


def run_dtype(
    setup: Run, recipe: str, opt: OptimConfig, batches, images, data, dtype: str, allowance: Allowance
) -> tuple[list[Row], Outcomes]:
    """One dtype's epoch: the free-running (jax, torch) pair where the report has ``dtype``
    (its trajectory row), and the outcomes of each run on the test split, with torch's run over
    every batch reversed (another correct arithmetic order) beside it. (float64 runs for a
    float32-only report too: its torch run bounds the float32 outcomes.)"""
    used, batches = compact(batches)
    train_x, labels = images[used].astype(dtype), data.train.labels[used]
    test_x, test_y = data.test.float_images().astype(dtype), data.test.labels

    def trained(name: str, role: str) -> Backend:
        backend = setup.backend(name, dtype, f"epoch {role}")
        backend.set_optimizer(opt)
        backend.set_train_data(train_x, labels)
        return backend

    def outcome(backend: Backend) -> tuple[np.ndarray, float, float]:
        correct, loss = backend.evaluate(test_x, test_y)
        return backend.predict(test_x).argmax(1), correct / len(test_y), loss

    rows, outcomes = [], {}
    torch_side = trained("torch", "")
    if dtype in setup.dtypes:
        pair = FreePair(trained("jax", ""), torch_side, list(setup.config.relu_inputs), eps=normalising_eps(opt),
                        pool_inputs=list(setup.config.pool_inputs),
                        data=lambda idx: (train_x[idx], labels[idx]))  # fmt: skip
        for t, idx in enumerate(batches, start=1):
            pair.before(train_x[idx], labels[idx])
            pair.step(idx)
            pair.after(t, allowance.step[dtype], allowance.noise[dtype])
        rows.append(pair.row(f"epoch ({len(batches)} steps, free-running)", f"{recipe}: trajectory", dtype))
        outcomes["jax", dtype] = outcome(pair.jax)
    else:
        torch_side.train_steps(batches)
    outcomes["torch", dtype] = outcome(torch_side)
    reversed_run = trained("torch", "reversed")
    reversed_run.train_steps([b[::-1].copy() for b in batches])
    outcomes["torch reversed", dtype] = outcome(reversed_run)
    return rows, outcomes


def epoch_dtypes(dtypes: tuple[str, ...]) -> list[str]:
    """The dtypes an epoch runs: the report's, and float64 (its torch run bounds float32's)."""
    return sorted(set(dtypes) | {"float64"})


def rows(
    recipe: str, dtypes, steps: int, sampled: list[Row], runs: list[tuple[list[Row], Outcomes]]
) -> list[Row]:
    """The epoch's rows: the sample's, each pair's trajectory, then each dtype's outcomes
    (float32 rows first)."""
    found, outcomes = list(sampled), {}
    for pair_rows, outcome in runs:
        found += pair_rows
        outcomes |= outcome
    for dtype in dtypes:
        references = [("torch reversed", dtype)] + ([("torch", "float64")] if dtype == "float32" else [])
        found += outcome_rows(recipe, dtype, outcomes, references, steps)
    return sorted(found, key=lambda r: r.dtype != "float32")


def outcome_rows(
    recipe, dtype, outcomes, references, steps, section: str = "", on: str = "test"
) -> list[Row]:
    """jax against torch after the epoch, each measure bounded by K times its largest value
    between torch and a correct torch run that differs only in arithmetic order.

    ``outcomes``: ``{(run, dtype): (predictions, accuracy, loss)}`` with runs ``"jax"``,
    ``"torch"`` and those of ``references``; ``section`` defaults to the epoch's, ``on`` names
    the examples measured."""
    section = section or f"epoch ({steps} steps, free-running)"
    pred, acc, loss = outcomes["torch", dtype]
    pred_j, acc_j, loss_j = outcomes["jax", dtype]
    spread = [outcomes[r] for r in references]
    names = ", ".join(f"{n} {d}" for n, d in references)
    found = int(np.sum(pred_j != pred))
    floor = max(int(np.sum(p != pred)) for p, _, _ in spread)
    rows = [verdict.count(section, f"{recipe}: {on} predictions differing: {found} of {len(pred)}", dtype, found,
                          floor, int(verdict.K * max(floor, 1)), f"floor: torch against {names}; at least 1 (a count)")]  # fmt: skip
    one = 1.0 / len(pred)  # accuracy resolves one image
    floor = max(max(abs(a - acc) for _, a, _ in spread), one)
    rows.append(Row(section, f"{recipe}: {on} accuracy {acc_j:.2%} / {acc:.2%}", dtype, abs(acc_j - acc), floor,
                    verdict.K * floor, abs(acc_j - acc) <= verdict.K * floor, None, f"floor: torch against {names}"))  # fmt: skip
    floor = max(max(rel_error(np.float64(l_), np.float64(loss)) for _, _, l_ in spread), unit_roundoff(dtype))
    err = rel_error(np.float64(loss_j), np.float64(loss))
    rows.append(Row(section, f"{recipe}: {on} loss {loss_j:.6f} / {loss:.6f}", dtype, err, floor, verdict.K * floor,
                    err <= verdict.K * floor, None, f"floor: torch against {names}"))  # fmt: skip
    return rows
