"""Teacher-forced optimizer steps: both frameworks step from the reference's state, every step.

At step ``t`` the JAX side is loaded with the reference's (torch float32) parameters,
optimizer buffers and step count, and both take one step on the same batch. The results are
compared element by element against :func:`verdict.step_floor`, measured at that step from
the reference's float64 step and its sensitivity to gradient rounding. An implementation
difference shows at the step where it acts, at full size, and the bound does not grow with
the step count: nothing accumulates. The reference then continues along its own trajectory.

A step whose batch holds a tie between the two sides (a pre-activation within rounding of 0
that they put on different sides of a ReLU; a max-pool window whose two largest values they
order differently) is compared without that example: its gradient legitimately differs by
O(1). The rows say which steps left an example out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jaxnet import batch
from jaxnet.backends import Backend
from jaxnet.errors import JaxnetError
from jaxnet.numerics import rel_error, unit_roundoff
from jaxnet.parity import verdict
from jaxnet.parity.free import FreePair
from jaxnet.parity.report import Row

OPT = "optimizer."  # prefix of optimizer buffers in a combined state


def state(backend: Backend) -> dict[str, np.ndarray]:
    """Parameters and optimizer buffers in one dict (buffers under ``optimizer.``)."""
    return backend.state_dict() | {OPT + k: v for k, v in backend.optimizer_state().items()}


def load(backend: Backend, combined: dict[str, np.ndarray], step: int) -> None:
    backend.load_state_dict({k: v for k, v in combined.items() if not k.startswith(OPT)})
    optimizer = {k.removeprefix(OPT): v for k, v in combined.items() if k.startswith(OPT)}
    backend.load_optimizer_state(optimizer, step)


def cast(combined: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    return batch.cast(combined, dtype)  # counters stay integers


@dataclass
class Sides:
    """The backends of a teacher-forced run; all with the same optimizer and training data."""

    ref: Backend  # torch float32: the reference trajectory
    ref64: Backend  # torch float64: the floors, reloaded every step
    spare: Backend  # torch float32: the reference's step on a batch without its tied examples
    jax: dict[str, Backend]  # dtype -> the side under test, reloaded every step
    relu_inputs: list[str]
    pool_inputs: list[str] = field(default_factory=list)


@dataclass
class TeacherForced:
    """The worst row per (dtype, tensor), and per-step series for the free-running pairs."""

    rows: dict[tuple[str, str], Row]
    ratios: dict[str, list[float]]  # dtype -> worst ratio of each step
    allowance: dict[str, list[float]]  # dtype -> normwise teacher-forced allowance of each step
    noise: dict[str, dict[str, float]] = field(default_factory=dict)  # dtype -> largest gradient floor
    tied_steps: list[int] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)  # dtype -> tensors only one side has
    free: dict[str, FreePair] = field(
        default_factory=dict
    )  # dtype -> the free-running pair stepped alongside


def teacher_forced(
    sides: Sides,
    batches: list[np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    factors: dict[str, float],
    free: dict[str, FreePair] | None = None,
) -> TeacherForced:
    """Step the reference along its own trajectory and compare every side's step from its state.

    ``factors`` maps a dtype to the scale from the float32 floor to that dtype's
    (:func:`verdict.ladder_factor`). ``free`` pairs (dtype -> pair) take their own step at each
    step too; the float32 pair's torch side must be ``sides.ref``.
    """
    out = TeacherForced({}, {d: [] for d in sides.jax}, {d: [] for d in sides.jax})
    worst: dict[tuple[str, str], tuple[float, int, tuple]] = {}
    free = free or {}
    out.free = dict(free)
    buffers = list(getattr(sides.ref.config, "buffers", ()))
    for t, idx in enumerate(batches, start=1):
        x, y = batch.take(images, idx), batch.take(labels, idx)
        for dtype, pair in free.items():
            pair.before(batch.cast(x, dtype), batch.cast(y, dtype))
        step, start = sides.ref.step, state(sides.ref)
        up = cast(start, "float64")
        keep = _untied(sides, start, up, step, x, factors)  # loads ``up`` into sides.ref64
        if len(keep) < len(idx):
            out.tied_steps.append(t)
        xk, yk = batch.take(x, keep), batch.take(y, keep)
        grads32 = sides.ref.loss_and_grads(xk, yk)[1]
        sides.ref.train_steps([idx])  # the trajectory takes the whole batch
        if len(keep) < len(idx):
            load(sides.spare, start, step)
            sides.spare.train_steps([idx[keep]])
            after32 = state(sides.spare)
        else:
            after32 = state(sides.ref)
        after64, moved, noise = _reference_float64(
            sides.ref64, up, step, batch.cast(xk, "float64"), batch.cast(yk, "float64"), grads32, buffers
        )
        measured = max(rel_error(after32[k], after64[k]) for k in sides.ref.state_dict())
        order = _order_spread(sides, start, step, xk, yk, buffers)
        got = {}  # dtype -> the side's state after its step from ``start``
        for dtype, side in sides.jax.items():  # _untied loaded each side with ``start``
            side.train_steps([idx[keep]])
            got[dtype] = state(side)
        expected = {d: after32 if d == "float32" else after64 for d in got}
        ratios: dict[str, list[float]] = {d: [] for d in got}
        for dtype in got:
            if got[dtype].keys() != expected[dtype].keys():  # a buffer one side lacks is a difference too
                out.missing[dtype] = sorted(got[dtype].keys() ^ expected[dtype].keys())
        for name in dict.fromkeys(k for d in got for k in got[d]):
            checked = [d for d in got if name in got[d] and name in expected[d]]
            floats = []
            for dtype in checked:
                value = got[dtype][name]
                if not np.issubdtype(np.asarray(value).dtype, np.floating):  # a counter: exactly
                    ratio = 0.0 if np.array_equal(value, expected[dtype][name]) else np.inf
                    ratios[dtype].append(ratio)
                    if (dtype, name) not in worst or ratio > worst[dtype, name][0]:
                        worst[dtype, name] = (ratio, t, None)
                else:
                    floats.append(dtype)
            if not floats:
                continue
            # a buffer the start lacks (Adam's, before its first step) starts at 0: the zeros are
            # made only then (``start.get``'s default would fill one at every step)
            before = start[name] if name in start else np.zeros_like(after64[name])
            # every dtype's floor and ratio in one chunked pass (order: the batch statistics'
            # spread, a constant per tensor, where the model has them)
            found = verdict.step_ratios(
                before, after32[name], after64[name],
                [m[name] for m in moved],
                [(got[d][name], expected[d][name], d, factors[d], order.get((d, name), 0.0)) for d in floats],
            )  # fmt: skip
            for dtype, (ratio, floor) in zip(floats, found, strict=True):
                ratios[dtype].append(ratio)
                if (dtype, name) not in worst or ratio > worst[dtype, name][0]:
                    worst[dtype, name] = (ratio, t, (got[dtype][name], expected[dtype][name], floor))
        for dtype in got:
            out.ratios[dtype].append(max(ratios[dtype]))
            spread = max(
                (
                    v / max(float(np.abs(after64[k]).max(initial=0)), 1e-300)
                    for (d, k), v in order.items()
                    if d == dtype
                ),
                default=0.0,
            )  # the reference's own normwise spread over the examples' order (batch statistics)
            out.allowance[dtype].append(
                verdict.K * max(measured * factors[dtype], unit_roundoff(dtype), spread)
            )
        for dtype in sides.jax:
            scaled = {k: v * factors[dtype] for k, v in noise.items()}
            out.noise[dtype] = {k: max(v, out.noise.get(dtype, {}).get(k, 0.0)) for k, v in scaled.items()}
            if dtype in free:
                free[dtype].step(idx)
                free[dtype].after(t, out.allowance[dtype][-1], scaled)
    section = f"step ({len(batches)}, teacher-forced)"
    tied = f"; a tied example left out at step(s) {out.tied_steps}" if out.tied_steps else ""
    for (dtype, name), (ratio, t, args) in worst.items():
        if args is None:  # a counter
            found = int(ratio > 0)
            out.rows[dtype, name] = verdict.count(
                section, name, dtype, found, 0, 0, f"a counter: exact; at step {t}"
            )
            continue
        out.rows[dtype, name] = verdict.elementwise(section, name, dtype, *args, f"at step {t}{tied}")
    for dtype, names in out.missing.items():
        note = "in one side's state only: " + ", ".join(names)
        out.rows[dtype, "state"] = verdict.count(
            section, "tensors in one side only", dtype, len(names), 0, 0, note
        )
    return out


def _untied(sides: Sides, start: dict, up: dict, step: int, x, factors: dict[str, float]) -> np.ndarray:
    """Positions in the batch of the examples no side disagrees on at a ReLU tie (``up``:
    ``start`` in float64, loaded into ``sides.ref64``, and each dtype's into its JAX side)."""
    acts32 = sides.ref.activations(x)
    load(sides.ref64, up, step)
    acts64 = sides.ref64.activations(batch.cast(x, "float64"))
    tied: set[int] = set()
    for dtype, side in sides.jax.items():
        load(side, cast(start, dtype), step)
        acts_j, acts_t = side.activations(batch.cast(x, dtype)), (acts32 if dtype == "float32" else acts64)
        names, pools = sides.relu_inputs, sides.pool_inputs
        floors = {n: verdict.ladder_floor(acts32[n], acts64[n], dtype, factors[dtype]) for n in names + pools}
        tied |= verdict.tied_examples(acts_j, acts_t, acts32, acts64, names, floors, pools)[0]
    keep = np.array([i for i in range(batch.size(x)) if i not in tied], dtype=np.int64)
    if len(keep) == 0:
        raise JaxnetError(
            f"every example of step {step + 1} sits at a ReLU or max-pool tie at these floors (coarse "
            "arithmetic such as TF32 widens them): nothing is left to compare the step on"
        )
    return keep


def _reference_float64(ref64: Backend, start: dict, step: int, x, y, grads32: dict, buffers=()):
    """The reference's float64 step from ``start``, the same step with every gradient element
    moved up and down by the gradient's measured float32 floor, and those floors.

    ``buffers`` (running statistics) move with the forward, not with the gradient: each of the
    three results holds them as the step's train-mode forward leaves them.

    ``ref64`` holds ``start`` already (:func:`_untied` loaded it; its forwards change nothing):
    the first step is taken from there, the other two after loading ``start`` again."""
    assert ref64.step == step, (ref64.step, step)
    grads64 = ref64.loss_and_grads(x, y)[1]
    moved_buffers = ref64.buffers_after(x) if buffers else {}
    u32 = unit_roundoff("float32")
    noise = {
        k: max(float(np.abs(grads32[k] - g).max()), u32 * float(np.abs(g).max())) for k, g in grads64.items()
    }
    results = []
    for sign in (0.0, 1.0, -1.0):
        if sign:
            load(ref64, start, step)
        ref64.apply_gradients({k: g + sign * noise[k] for k, g in grads64.items()})
        results.append(state(ref64) | moved_buffers)
    return results[0], results[1:], noise


def other_orders(n: int) -> list[np.ndarray]:
    """Two other correct orders of a batch's ``n`` examples: reversed, and rotated by half.

    Each is one sample of a correct order's rounding error in the batch statistics' sums. Two,
    not one: a single sample of a roughly normal error lands below 1/K of its size with
    probability about 0.8/K (5% at K = 16), a floor a correct port then fails; the larger of
    two, of the order of (0.8/K)^2 (somewhat more: both are measured against the same original
    order, so they are correlated). A kernel that first sums each half of the batch sums the
    rotated batch to the same bits (addition commutes); there the second sample is 0 and the
    term is the reversed batch's alone, as before. (The calibration's ResNet at seed 1 reached
    1.02 K in a float64 running mean with the reversed batch alone; docs/calibration-resnet-
    cpu.md is measured with these two.)"""
    index = np.arange(n)
    return [index[::-1], np.roll(index, n // 2)]


def _order_spread(
    sides: Sides, start: dict, step: int, x, y, buffers: list[str]
) -> dict[tuple[str, str], float]:
    """How far the reference's step moves when the batch's examples come in reverse order (the
    same step, other rounding), in each dtype, normwise: each tensor's largest spread, added to
    every element's floor. Empty for a model without running statistics.

    Why it is needed: where examples depend on each other through batch statistics (BatchNorm
    in train mode), every parameter's step depends on the channels' means and variances, sums
    over ``n = N*H*W`` elements (12544 for 16 images of 28 x 28). A correct kernel's error in
    such a sum is ``~sqrt(n) u |x|`` at random sign, and which order a kernel takes is its own
    (torch's float64 BatchNorm: 10-60 ulp over n = 12544; the port's: within 3). The dtype
    ladder cannot see it: torch's float32 BatchNorm accumulates its statistics in double on a
    CPU, so its float32-vs-float64 gap holds no reduction error. Reversing the batch is
    another correct order of the same sums, as is rotating it by half: their larger spread is
    a measure of that error's size (:func:`other_orders`).

    Why normwise: an error in a channel's statistic moves every element that reads it (the
    whole BatchNorm's output, then every gradient downstream) by one common perturbation, not
    by a per-element one. One sample of it, taken element by element, lands near 0 wherever
    the two orders happen to round alike at that element, while another correct order (the
    other framework's) does not: the spread's size is the tensor's, as every forward and
    gradient row's floor is normwise (:func:`verdict.ladder_floor`). The float32 term is at
    least the float64 one up the dtype ladder (below)."""
    if not buffers or not getattr(sides.ref, "training", False):  # eval mode: no batch statistics
        return {}
    out = {}
    for dtype, ref in (("float32", sides.spare), ("float64", sides.ref64)):
        results = []
        for order in (slice(None), *other_orders(batch.size(x))):
            xo, yo = batch.cast(batch.take(x, order), dtype), batch.cast(batch.take(y, order), dtype)
            load(ref, cast(start, dtype), step)
            grads = ref.loss_and_grads(xo, yo)[1]
            moved = ref.buffers_after(xo)
            ref.apply_gradients(grads)
            results.append(state(ref) | moved)
        a, *others = results
        for k in a:
            if np.issubdtype(np.asarray(a[k]).dtype, np.floating):
                out[dtype, k] = max(
                    float(np.abs(np.asarray(a[k], np.float64) - b[k]).max(initial=0.0)) for b in others
                )
    # float32: torch's own spread holds no reduction error (it sums in double), but a port that
    # sums its statistics in float32 does; the float64 spread measures a correct order's error
    # of these sums, and rounding error is first-order linear in u: times u32 / u64 (the ladder).
    up = unit_roundoff("float32") / unit_roundoff("float64")
    for (dtype, k), v in list(out.items()):
        if dtype == "float64" and ("float32", k) in out:
            out["float32", k] = float(np.maximum(out["float32", k], v * up))  # a NaN stays
    return out
