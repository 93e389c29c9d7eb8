"""Verdicts from measured noise floors (numpy only).

A cross-framework difference is judged against the *noise floor*: how far two correct
executions of the same computation land apart when only their arithmetic differs. jaxnet
measures it in the same run, on the same inputs, from the reference (torch) itself:

- the **dtype ladder**: the reference's float32 result against its float64 result from the
  same (upcast) inputs is the float32 rounding error actually incurred. Rounding error is
  first-order linear in the unit roundoff ``u``, so the float64 floor of the same computation
  is that measurement times ``u64 / u32 = 2^-29``; with TF32 (or bf16) matmuls in force on
  either side, times ``u_tf32 / u32``. No floor is below one ``u`` of the row's dtype: a
  result stored in that dtype cannot be resolved more finely.
- **per element** for optimizer steps (:func:`step_floor`): one ulp of the values involved,
  plus how far the reference optimizer moves that element when its gradient moves by the
  gradient's measured floor (a finite difference of the real update rule in float64, so
  Adam's element near ``g = 0`` gets its own steep slope ``lr / (sqrt(v_hat) + eps)``).

A row passes when ``err <= K * floor``. K covers what separates one correct execution from
another beyond the reference's own error, each a factor of about 2: the error of the other
side adds to the reference's (two errors of similar size); the other side may sum in a less
accurate order than the reference (XLA's dot and reduction strategies against MKL's, or MKL's
generic kernels against its AVX-512 ones: the calibration saw the ratio grow from 3.7 to 5.8
when torch switched kernels); a normwise maximum over a few elements (a 10-element bias) is a
noisy sample; and free-running gaps grow like a random walk against a linearly accumulated
bound. 2^4 = 16. Calibrated (``python -m jaxnet.parity.calibrate``, docs/calibration.md):
over 8 seeds and 4 arithmetic orders, correct runs reach ``err / floor`` of at most 5.0 on
every row computed once or teacher-forced, 5.8 on float32 free-running trajectories and 14.3
on one float64 trajectory with torch on MKL's generic kernels (the thinnest margin); every
planted fault's first failing row sits at 4.6 times K or more.
"""

from __future__ import annotations

import numpy as np

from jaxnet.numerics import error, rel_error, spacing, unit_roundoff
from jaxnet.parity.report import Row

K = 16.0


def ladder_factor(dtype: str, matmul: str = "highest", reference_matmul: str = "highest") -> float:
    """Scale from the reference's measured float32 error to the floor of a ``dtype`` row.

    ``matmul`` is the coarsest float32 matmul arithmetic either side uses; ``reference_matmul``
    the one the reference's float32 run used (the one its measurement reflects).
    """
    return unit_roundoff(dtype, matmul) / unit_roundoff("float32", reference_matmul)


def ladder_floor(ref32: np.ndarray, ref64: np.ndarray, dtype: str, factor: float) -> float:
    """Normwise relative floor of a ``dtype`` row from the reference's float32 and float64 values."""
    return max(rel_error(ref32, ref64) * factor, unit_roundoff(dtype))


def normwise(section: str, quantity: str, dtype: str, actual, expected, floor: float, note: str = "") -> Row:
    """Row for ``max|a - b| / max|b| <= K * floor``."""
    err = error(actual, expected, dtype)
    bound = K * floor
    return Row(section, quantity, dtype, err.rel, floor, bound, err.rel <= bound, err, note)


def elementwise(
    section: str, quantity: str, dtype: str, actual, expected, floor: np.ndarray, note: str = ""
) -> Row:
    """Row for ``|a_i - b_i| <= K * floor_i`` at every element.

    ``err``, ``floor`` and ``bound`` are shown at the element closest to failing, relative to
    ``max|b|``, so that the printed err <= bound holds exactly when the row passes.
    """
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    diff, ratio = _ratios(a, b, floor)
    i = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if ratio.ndim else ()
    scale = float(np.abs(b).max()) or 1.0
    worst = f"per element; closest to its bound at {[int(v) for v in i]}"
    row = Row(
        section,
        quantity,
        dtype,
        float(diff[i]) / scale,
        float(floor[i]) / scale,
        K * float(floor[i]) / scale,
        bool(np.all(ratio <= 1)),
        error(a, b, dtype),
        f"{worst}; {note}" if note else worst,
    )
    return row


def worst_ratio(actual, expected, floor: np.ndarray) -> float:
    """``max_i |a_i - b_i| / (K floor_i)``: what :func:`elementwise` decides on, computed alone.

    Called on every element of every step: in place, in fewer passes than :func:`_ratios`. A
    difference of 0 over a positive floor is already a ratio of 0; a NaN anywhere (a NaN
    difference, or 0 over a floor of 0) takes :func:`_ratios`' way, which decides those."""
    diff = np.asarray(np.subtract(actual, expected, dtype=np.float64))  # 0-d stays an array
    np.abs(diff, out=diff)
    ratio = np.asarray(np.multiply(floor, K, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.divide(diff, ratio, out=ratio if ratio.shape == diff.shape else None)
    worst = float(ratio.max(initial=0))
    if np.isnan(worst):
        return float(
            _ratios(np.asarray(actual, np.float64), np.asarray(expected, np.float64), floor)[1].max(initial=0)
        )
    return worst


def _ratios(a: np.ndarray, b: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    diff = np.abs(a - b)
    diff[np.isnan(diff)] = np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        return diff, np.where(diff == 0, 0.0, diff / (K * floor))


def count(section: str, quantity: str, dtype: str, found: int, floor: int, bound: int, note: str = "") -> Row:
    """Row for a count (flipped masks, differing predictions): passes when ``found <= bound``."""
    return Row(section, quantity, dtype, float(found), float(floor), float(bound), found <= bound, None, note)


def relu_ties(pre_a: np.ndarray, pre_b: np.ndarray, within: float) -> tuple[np.ndarray, np.ndarray]:
    """Where two pre-activation arrays disagree on ``x > 0`` (``[n, 2]`` indices), and which
    of those flips are ties.

    A tie is a flip where both values lie within ``within`` (relative to ``pre_b``'s largest
    value) of 0: ReLU's derivative jumps there, so two correct executions may put it on
    either side, and that example's gradient then legitimately differs by O(1). ``within``
    comes from the reference alone (its measured floor, or the accumulated bound of two
    free-running runs), never from how far the other side happens to be.
    """
    a, b = np.asarray(pre_a), np.asarray(pre_b)
    flips = np.argwhere((a > 0) != (b > 0))
    threshold = within * float(np.abs(b).max())
    return flips, np.array([max(abs(a[tuple(i)]), abs(b[tuple(i)])) <= threshold for i in flips], dtype=bool)


def pool_ties(in_a: np.ndarray, in_b: np.ndarray, within: float) -> tuple[np.ndarray, np.ndarray]:
    """Where two inputs of a 2x2, stride-2 max-pool (NCHW) pick different elements, and which
    of those are ties: the window's two largest values within ``within`` (relative to the
    largest input) of each other, on both sides. The gradient flows to the picked element
    only, so a tie moves it legitimately, like a ReLU at 0.

    The pool is taken to sit next to a ReLU (``pool(relu(h)) = relu(pool(h))``): the input may
    be the ReLU's output or its pre-activation ``h``, and windows whose largest value is not
    positive on either side are skipped (the ReLU passes no gradient there).
    """

    def windows(x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        x = x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
        return x.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)

    wa, wb = windows(np.asarray(in_a)), windows(np.asarray(in_b))
    live = (wa.max(-1) > 0) | (wb.max(-1) > 0)
    flips = np.argwhere((wa.argmax(-1) != wb.argmax(-1)) & live)
    threshold = within * float(np.abs(wb).max())

    def gap(w: np.ndarray) -> float:  # the largest value's lead over the next
        top = np.sort(w)
        return float(top[-1] - top[-2])

    ties = [max(gap(wa[tuple(i)]), gap(wb[tuple(i)])) <= threshold for i in flips]
    return flips, np.array(ties, dtype=bool)


def tied_examples(
    acts_a: dict,
    acts_b: dict,
    acts32: dict,
    acts64: dict,
    names: list[str],
    floors: dict[str, float],
    pools: list[str] = (),
) -> tuple[set[int], dict[str, tuple[int, int]]]:
    """Examples whose gradient may legitimately differ between sides ``a`` and ``b``.

    Those with a ReLU flip (at ``names``) or a max-pool flip (``pools``: the pools' inputs)
    at a tie (within ``K`` times the layer's measured floor) between the two sides, or with
    any flip between the reference's float32 and float64 runs. Also, per layer, ``(flips,
    ties)`` between the two sides.
    """
    tied: set[int] = set()
    counts = {}
    for name in [*names, *pools]:
        find = pool_ties if name in pools else relu_ties
        flips, at_tie = find(acts_a[name], acts_b[name], K * floors[name])
        tied |= {int(i[0]) for i, tie in zip(flips, at_tie, strict=True) if tie}
        tied |= {int(i[0]) for i in find(acts32[name], acts64[name], 0.0)[0]}
        counts[name] = (len(flips), int(np.sum(at_tie)))
    return tied, counts


def step_floor(
    before: np.ndarray,
    after32: np.ndarray,
    after64: np.ndarray,
    moved: list[np.ndarray],
    dtype: str,
    factor: float,
) -> np.ndarray:
    """Per-element floor of one optimizer step's result (a parameter or a state buffer).

    The sum of what separates two correct executions of ``after = before + update``:

    - the resolution of the result: one ulp (in ``dtype``) of ``max(|before|, |after|)``,
      which covers the cancellation in ``before + update``, and one ulp of ``|update|`` for
      the update's own arithmetic;
    - the reference's measured error at this element: its float32 result against its float64
      one (``factor`` scales it to ``dtype``);
    - the element's own sensitivity to gradient rounding: how far the reference's float64
      update moves when every gradient element moves up or down by the gradient's measured
      float32 floor (``moved``), scaled by ``factor``. Adam's elements near ``g = 0`` get
      their steep slope ``lr / (sqrt(v_hat) + eps)`` here, SGD's get ``lr``.
    """
    return step_floor_of(step_floor_terms(before, after32, after64, moved), dtype, factor)


def step_floor_terms(before, after32, after64, moved: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`step_floor` needs besides the dtype: the result's size, the update's size,
    and the reference's error plus sensitivity (computed once for every dtype's rows)."""
    after64 = np.asarray(after64)

    def gap(a, b) -> np.ndarray:  # |a - b| in float64, in one new array
        d = np.asarray(np.subtract(a, b, dtype=np.float64))
        return np.abs(d, out=d)

    update = gap(after64, before)
    size = np.asarray(np.abs(after64))
    size = np.maximum(
        size, np.abs(before), out=size if size.shape == np.broadcast(size, before).shape else None
    )
    sensitivity = gap(moved[0], after64)
    for m in moved[1:]:
        np.maximum(sensitivity, gap(m, after64), out=sensitivity)
    measured = gap(after32, after64)
    measured += sensitivity
    return size, update, measured


# Elements per pass of :func:`step_ratios`: a pass's float64 temporaries (512 KiB each) are
# read again by the next pass while still cached, instead of streaming whole tensors from
# memory a dozen times; and each tensor's terms live for one pass only (the whole-array way
# kept three float64 copies of every tensor until both dtypes were done). One 784x512 kernel,
# both dtypes (docs/step-ratios-chunks-cpu.md, three runs): 10-15 ms at 2^15-2^16 against
# 15-17 ms in one chunk (the whole-array way's passes); below 2^13 numpy's per-call cost takes over.
CHUNK = 1 << 16


def step_ratios(before, after32, after64, moved: list, sides: list[tuple]) -> list[tuple[float, np.ndarray]]:
    """:func:`worst_ratio` of one step's result against :func:`step_floor` (plus a constant),
    for several sides of the same step at once, and each side's floor.

    ``sides``: ``(actual, expected, dtype, factor, extra)`` per side; ``extra`` (a float) is
    added to every element's floor. Returns ``(ratio, floor)`` per side. The same values as
    the whole-array functions, element for element (every operation is elementwise, and a
    maximum does not depend on how it is split), computed :data:`CHUNK` elements at a time.
    """
    shape = np.shape(after64)
    flat = [np.ravel(np.asarray(a)) for a in (before, after32, after64, *moved)]
    if any(a.size != flat[2].size for a in flat) or any(
        np.shape(a) != shape or np.shape(e) != shape for a, e, *_ in sides
    ):  # a broadcast ``before``, or a side of another shape: the whole-array way (as before)
        terms = step_floor_terms(before, after32, after64, moved)
        out = []
        for actual, expected, dtype, factor, extra in sides:
            floor = step_floor_of(terms, dtype, factor) + extra
            out.append((worst_ratio(actual, expected, floor), floor))
        return out
    pairs = [(np.ravel(np.asarray(a)), np.ravel(np.asarray(e))) for a, e, *_ in sides]
    floors = [np.empty(flat[2].size, np.float64) for _ in sides]
    ratios = [0.0] * len(sides)
    for start in range(0, max(flat[2].size, 1), CHUNK):
        part = slice(start, start + CHUNK)
        b, a32, a64, *m = (a[part] for a in flat)
        terms = step_floor_terms(b, a32, a64, m)
        for i, (_, _, dtype, factor, extra) in enumerate(sides):
            floor = step_floor_of(terms, dtype, factor)
            if extra:
                floor += extra
            floors[i][part] = floor
            # np.maximum keeps a NaN ratio (a NaN floor: the reference went non-finite), as
            # the whole array's max does; Python's max would drop it
            ratios[i] = float(np.maximum(ratios[i], worst_ratio(pairs[i][0][part], pairs[i][1][part], floor)))
    return [(r, f.reshape(shape)) for r, f in zip(ratios, floors, strict=True)]


def step_floor_of(terms: tuple[np.ndarray, np.ndarray, np.ndarray], dtype: str, factor: float) -> np.ndarray:
    """:func:`step_floor` from :func:`step_floor_terms`."""
    size, update, measured = terms  # size and update are magnitudes already: no abs here
    floor = spacing(size, dtype)
    floor += spacing(update, dtype)
    floor += measured * factor
    return floor
