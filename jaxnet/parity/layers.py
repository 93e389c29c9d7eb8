"""Forward and gradient rows: every layer's output, the ReLU and max-pool choices, the loss and
every gradient on one batch (the probes at the edges are :mod:`jaxnet.parity.probes`).

Both sides get the same weights and inputs; torch is the reference. A row's floor is the
reference's own float32 error on that quantity (:func:`verdict.ladder_floor`). Examples at a
tie (a pre-activation within rounding of 0, a max-pool window's two largest within rounding of
each other) that the two sides decide differently are left out of the loss and gradients,
where they legitimately differ by O(1).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np

from jaxnet import batch
from jaxnet.numerics import rel_error
from jaxnet.parity import verdict
from jaxnet.parity.report import Row
from jaxnet.parity.sections import Run

DROPOUT_NOTE = (
    "compared in eval mode (off) and in train mode with the same masks handed to both sides; "
    "the frameworks' own draws differ by design (torch's Philox/MT stream against JAX's "
    "threefry keys), so training runs with dropout are compared on outcomes, and optimizer "
    "steps here run in eval mode"
)


def shared_masks(setup: Run, x, seed: int) -> dict[str, np.ndarray]:
    """One 0/1 keep-mask per dropout (keep probability ``1 - p``), drawn with numpy, shaped
    like the dropout's input (its eval-mode output) in torch's layout."""
    acts = setup.backend("torch", "float32").activations(x)
    rng = np.random.default_rng([seed, 7])
    return {
        name: (rng.random(acts[name].shape) >= p).astype(np.float32)
        for name, p in setup.config.dropouts.items()
        if name in acts  # a dropout the forward never calls needs no mask
    }


@contextlib.contextmanager
def mode(backends, train: bool):
    """The backends in train (``True``) or eval mode for the block, then as they were."""
    before = [getattr(b, "training", False) for b in backends]
    for b in backends:
        b.training = train
    try:
        yield
    finally:
        for b, was in zip(backends, before, strict=True):
            b.training = was


def forward_and_gradient(
    setup: Run, x, y, masks: dict[str, np.ndarray] | None = None, train: bool = False
) -> list[Row]:
    """Every layer's output, the ReLU masks, the loss and every gradient on one batch.

    ``masks`` (``{dropout name: 0/1 array}``, torch layout): both sides' dropouts apply these
    instead of being off (train mode on the same draw); the rows' sections say so. ``train``:
    BatchNorm on batch statistics, and the running statistics after the forward are rows.
    """
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
    suffix = " (train mode, shared dropout masks)" if masks else " (train mode)" if train else ""
    rows: dict[str, list[Row]] = {"forward": [], "gradient": []}
    with mode([ref, ref64, *sides.values()], train):
        x64 = batch.cast(x, "float64")
        acts32, acts64 = ref.activations(x, masks), ref64.activations(x64, masks)
        for dtype, side in sides.items():
            acts_t = acts32 if dtype == "float32" else acts64
            acts_j = side.activations(batch.cast(x, dtype), masks)
            names = [k for k in acts32 if k in acts_j and acts_j[k].shape == acts32[k].shape]
            floors = {
                k: verdict.ladder_floor(acts32[k], acts64[k], dtype, setup.factors[dtype]) for k in names
            }
            spread = _order_spread(setup, ref if dtype == "float32" else ref64, x, y, dtype, masks, train)
            floors = {k: max(f, spread.get(k, 0.0)) for k, f in floors.items()}
            for name in names:
                row = verdict.normwise(
                    "forward" + suffix, name, dtype, acts_j[name], acts_t[name], floors[name]
                )
                rows["forward"].append(replace(row, kind="output"))
            for name in [k for k in acts32 if k in acts_j and acts_j[k].shape != acts32[k].shape]:
                note = f"torch {list(acts32[name].shape)}, nnx {list(acts_j[name].shape)} (in torch's layout)"
                row = verdict.count("forward" + suffix, f"{name}: shape", dtype, 1, 0, 0, note)
                rows["forward"].append(replace(row, kind="shape"))
            relus = [n for n in setup.config.relu_inputs if n in floors]
            pools = [n for n in setup.config.pool_inputs if n in floors]
            tied, counts = verdict.tied_examples(acts_j, acts_t, acts32, acts64, relus, floors, pools)
            for name, (flips, ties) in counts.items():
                what = "max-pool choice reading" if name in pools else "ReLU mask after"
                quantity = f"{what} {name}: {flips} flip(s), {ties} at ties"
                row = verdict.count(
                    "forward" + suffix, quantity, dtype, flips - ties, 0, 0, "flips away from a tie"
                )
                rows["forward"].append(replace(row, kind="flip"))
            if train and setup.config.buffers:
                rows["forward"] += _running_rows(setup, ref, ref64, side, x, dtype, suffix)
            keep = np.array([i for i in range(batch.size(y)) if i not in tied], dtype=np.int64)
            note = f"{len(tied)} example(s) at a tie left out" if tied else ""
            if len(keep) == 0:  # every example at a tie: nothing left to compare the loss on
                row = verdict.count("forward" + suffix, "loss: every example at a tie", dtype, 1, 0, 0, note)
                rows["forward"].append(replace(row, kind="loss"))
                continue
            kept = {k: m[keep] for k, m in masks.items()} if masks else None
            xk, yk = batch.take(x, keep), batch.take(y, keep)
            loss32, g32 = ref.loss_and_grads(xk, batch.cast(yk, "float32"), kept)
            loss64, g64 = ref64.loss_and_grads(batch.cast(xk, "float64"), batch.cast(yk, "float64"), kept)
            loss_j, g_j = side.loss_and_grads(batch.cast(xk, dtype), batch.cast(yk, dtype), kept)
            loss_t, g_t = (loss32, g32) if dtype == "float32" else (loss64, g64)
            floor = verdict.ladder_floor(np.float64(loss32), np.float64(loss64), dtype, setup.factors[dtype])
            floor = max(floor, spread.get("loss", 0.0))
            row = verdict.normwise(
                "forward" + suffix, "loss", dtype, np.float64(loss_j), np.float64(loss_t), floor, note
            )
            rows["forward"].append(replace(row, kind="loss"))
            for name in g_t:
                if name not in g_j:
                    continue  # a parameter one side lacks cannot get here: the weights were loaded by name
                floor = verdict.ladder_floor(g32[name], g64[name], dtype, setup.factors[dtype])
                floor = max(floor, spread.get(f"gradient {name}", 0.0))
                row = verdict.normwise("gradient" + suffix, name, dtype, g_j[name], g_t[name], floor, note)
                rows["gradient"].append(replace(row, kind="gradient"))
    return rows["forward"] + rows["gradient"]


def _order_spread(setup: Run, ref, x, y, dtype: str, masks, train: bool) -> dict[str, float]:
    """Where the examples of a batch depend on each other (BatchNorm in train mode), the
    reference's own spread when they come in reverse order: the same function, other rounding
    (torch on a CPU accumulates batch statistics in double even in float32, so its float32
    error alone understates a float64 reduction's). Per output, the loss and each gradient;
    empty where examples are independent (the floors need no such term there)."""
    if not (train and setup.config.buffers) or masks:
        return {}
    n = batch.size(x)
    back = np.arange(n)[::-1]
    xd, xr = batch.cast(x, dtype), batch.cast(batch.take(x, back), dtype)
    acts, acts_r = ref.activations(xd), ref.activations(xr)
    out = {k: rel_error(v[back], acts[k]) for k, v in acts_r.items() if v.shape[:1] == (n,) and k in acts}
    loss, grads = ref.loss_and_grads(xd, batch.cast(y, dtype))
    loss_r, grads_r = ref.loss_and_grads(xr, batch.cast(batch.take(y, back), dtype))
    out["loss"] = rel_error(np.float64(loss_r), np.float64(loss))
    return out | {f"gradient {k}": rel_error(grads_r[k], g) for k, g in grads.items()}


def _running_rows(setup: Run, ref, ref64, side, x, dtype: str, suffix: str) -> list[Row]:
    """The running statistics (and counters) after one train-mode forward, each side's against torch's."""
    x64, flipped = batch.cast(x, "float64"), batch.take(x, slice(None, None, -1))
    b32, b64 = ref.buffers_after(x), ref64.buffers_after(x64)
    # Batch statistics do not depend on the examples' order; their rounding does. torch on a CPU
    # accumulates them in double even in float32, so its float32-vs-float64 error understates
    # a float64 reduction's: the reference's own spread between the two orders is a floor too.
    order = (
        ref.buffers_after(flipped)
        if dtype == "float32"
        else ref64.buffers_after(batch.cast(flipped, "float64"))
    )
    b_j = side.buffers_after(batch.cast(x, dtype))
    rows = []
    for name in setup.config.buffers:
        expected = b32[name] if dtype == "float32" else b64[name]
        if not np.issubdtype(expected.dtype, np.floating):  # a counter: exactly equal
            found = int(np.sum(b_j[name] != expected))
            rows.append(
                replace(
                    verdict.count(
                        "forward" + suffix, f"running {name}", dtype, found, 0, 0, "a counter: exact"
                    ),
                    kind="running",
                )
            )
            continue
        floor = max(
            verdict.ladder_floor(b32[name], b64[name], dtype, setup.factors[dtype]),
            rel_error(order[name], expected),
        )
        note = "floor: the larger of torch's float32 error and its spread over the examples' order"
        rows.append(
            replace(
                verdict.normwise(
                    "forward" + suffix, f"running {name}", dtype, b_j[name], expected, floor, note
                ),
                kind="running",
            )
        )
    return rows


def captured_names(setup: Run, x) -> tuple[list[str], list[str]]:
    """The activation names each side captures on ``x`` (torch's, then jax's, in torch's words)."""
    acts_t = setup.backend("torch", "float32").activations(x)
    acts_j = setup.backend("jax", setup.dtypes[0]).activations(batch.cast(x, setup.dtypes[0]))
    return list(acts_t), list(acts_j)
