"""Probe rows: inputs and weights at the edges, where a port's activation, pooling or loss can
differ from torch's while ordinary batches never show it.

- ``relu'(0)``: the first example, repeated to the batch's size, with every float input and
  every bias zeroed, so every pre-activation is exactly 0: the derivative of each activation
  at its kink decides the gradients (torch's ReLU'(0) = 0, ``jnp.where(x >= 0, x, 0)`` gives
  1; LeakyReLU's slope at 0 likewise).
- ``bend`` (ports): every Linear and convolution weight times :data:`BEND_SCALE`, so
  pre-activations leave the near-linear region around 0 for the bend of GELU-like
  activations (GELU, SiLU, Mish, ELU), where an approximation (GELU's tanh form: up to
  4.7e-4 apart at |x| = 2.7, 1.2e-6 at |x| = 0.25) differs most. Every output, the loss and
  every gradient are rows.
- ``max-pool ties`` (ports with ``pool_inputs``): convolutions reduced to their centre tap and
  the images made constant on 2x2 blocks aligned with the pool, so that every 2x2 window the
  pool reads is an exact tie: the gradient then goes where the pool's tie rule sends it
  (torch and ``nnx.max_pool``: the first maximum; a reshape-and-``max`` pool splits it).
- ``extreme logits``: the logits module's weights times :data:`EXTREME_SCALE`, logit gaps of
  ~1e3 (``log(softmax(z))`` underflows to ``log 0``; ``log_softmax`` does not).

Every row's floor is the reference's own float32 error on the same probe (as for every row).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import numpy as np

from jaxnet import batch
from jaxnet.numerics import unit_roundoff
from jaxnet.parity import verdict
from jaxnet.parity.forced import other_orders
from jaxnet.parity.layers import forward_and_gradient
from jaxnet.parity.report import Row
from jaxnet.parity.sections import Run

EXTREME_SCALE = 1e4  # last-layer scale for the log-softmax probe: logit gaps of ~1e3
# torch's default init (uniform, variance 1/(3 fan_in)) gives unit inputs pre-activations of
# RMS ~0.58; times 4, ~2.3: the bend of GELU-like activations, where their forms differ most.
BEND_SCALE = 4.0
WEIGHTED = ("linear", "conv", "conv_transpose")  # the module kinds whose weights feed an activation


def probes(setup: Run, x, y) -> list[Row]:
    """Inputs at the edges: ReLU exactly at 0, GELU's bend and max-pool ties (a port's), and
    logits far beyond exp's range."""
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
    everyone = [ref, ref64, *sides.values()]
    buffers = set(getattr(setup.config, "buffers", ()))
    zero_bias = {
        k: (np.zeros_like(v) if k.endswith("bias") and k not in buffers else v)
        for k, v in setup.state.items()
    }
    # The first example, once per row of the batch (the batch's compiled programs serve): every
    # example alike, so the loss's gradient is the one example's whatever the labels' balance
    # (distinct labels could sum the logits' gradients to exactly 0 and hide ReLU'(0)).
    first = np.zeros(batch.size(x), dtype=np.int64)
    zero = batch.tree_map(lambda a: np.zeros_like(a) if batch.is_float(a) else a, batch.take(x, first))
    rows = _gradient_rows(
        setup, everyone, zero_bias, zero, batch.take(y, first), "relu'(0): grad", "probe relu"
    )
    if setup.config.kind == "port":
        rows += _bend(setup, x, y)
        if setup.config.pool_inputs:
            rows += _pool_ties(setup, everyone, x, y)
    last = setup.config.logits_name
    extreme = {
        k: (v * np.float32(EXTREME_SCALE) if k.startswith(last + ".") else v) for k, v in setup.state.items()
    }
    _load(everyone, extreme)
    loss32, _ = ref.loss_and_grads(x, batch.cast(y, "float32"))
    loss64, _ = ref64.loss_and_grads(batch.cast(x, "float64"), batch.cast(y, "float64"))
    spread = _order_spread(
        setup, ref, ref64, x, y, {"float32": {"": loss32}, "float64": {"": loss64}}, loss=True
    )
    for dtype, side in sides.items():
        loss_j, _ = side.loss_and_grads(batch.cast(x, dtype), batch.cast(y, dtype))
        loss_t = loss32 if dtype == "float32" else loss64
        floor = verdict.ladder_floor(np.float64(loss32), np.float64(loss64), dtype, setup.factors[dtype])
        floor += spread.get(dtype, {}).get("", 0.0)
        quantity = f"loss at extreme logits (x{EXTREME_SCALE:g})"
        row = verdict.normwise("probe", quantity, dtype, np.float64(loss_j), np.float64(loss_t), floor)
        rows.append(replace(row, kind="probe extreme"))
    for backend in everyone:
        backend.load_state_dict(setup.weights(backend.dtype))
    return sorted(rows, key=lambda r: r.dtype != "float32")


def _load(backends, weights: dict[str, np.ndarray]) -> None:
    for backend in backends:
        backend.load_state_dict(batch.cast(weights, backend.dtype))


def _gradient_rows(setup: Run, everyone, weights, xs, ys, what: str, kind: str, note: str = "") -> list[Row]:
    """Every gradient of the loss on ``(xs, ys)`` under ``weights``, each side's against torch's."""
    ref, ref64, *jax_sides = everyone
    _load(everyone, weights)
    _, g32 = ref.loss_and_grads(xs, batch.cast(ys, "float32"))
    _, g64 = ref64.loss_and_grads(batch.cast(xs, "float64"), batch.cast(ys, "float64"))
    spread = _order_spread(setup, ref, ref64, xs, ys, {"float32": g32, "float64": g64})
    rows = []
    for side in jax_sides:
        dtype = side.dtype
        _, g_j = side.loss_and_grads(batch.cast(xs, dtype), batch.cast(ys, dtype))
        g_t = g32 if dtype == "float32" else g64
        for name in g_j:
            floor = verdict.ladder_floor(g32[name], g64[name], dtype, setup.factors[dtype])
            floor += spread.get(dtype, {}).get(name, 0.0)
            row = verdict.normwise("probe", f"{what} {name}", dtype, g_j[name], g_t[name], floor, note)
            rows.append(replace(row, kind=kind))
    return rows


def _order_spread(setup: Run, ref, ref64, xs, ys, values: dict, loss: bool = False) -> dict:
    """dtype -> quantity -> the reference's normwise relative spread when the batch's examples
    come in reverse order, where they depend on each other through batch statistics (a model
    with running statistics, in train mode); else empty.

    The probes' floors are the dtype ladder, which cannot see the error of BatchNorm's
    statistics: torch's float32 kernel sums them in double on a CPU, while its float64 one
    carries 10-60 ulp over n = N*H*W elements (12544 for 16 images of 28 x 28) and a correct
    port's order carries its own. Each probe output depends on those sums through every
    example of the batch; reversing the batch is another correct order of the same sums, so
    its spread is a sample of that error's size, as is rotating it by half; the larger of the
    two is taken (:func:`jaxnet.parity.forced.other_orders`), normwise (one perturbation per
    channel moves the whole tensor, as :func:`jaxnet.parity.forced._order_spread` argues).
    A single example has only one order: no term."""
    buffers = getattr(setup.config, "buffers", ())
    if not (buffers and setup.config.trains) or batch.size(xs) < 2:
        return {}
    out = {}
    for dtype, backend in (("float32", ref), ("float64", ref64)):
        out[dtype] = dict.fromkeys(values[dtype], 0.0)
        scale = {k: max(float(np.abs(np.asarray(v, np.float64)).max(initial=0.0)), 1e-300)
                 for k, v in values[dtype].items()}  # fmt: skip
        for order in other_orders(batch.size(xs)):
            xr, yr = batch.cast(batch.take(xs, order), dtype), batch.cast(batch.take(ys, order), dtype)
            got, grads = backend.loss_and_grads(xr, yr)
            other = {"": got} if loss else grads
            for k, v in values[dtype].items():
                spread = float(np.abs(np.asarray(v, np.float64) - other[k]).max(initial=0.0)) / scale[k]
                out[dtype][k] = max(out[dtype][k], spread)
    # float32: torch sums the statistics in double, a port may in float32: the float64 spread
    # up the dtype ladder (first-order linear in u), as in forced._order_spread
    up = unit_roundoff("float32") / unit_roundoff("float64")
    out["float32"] = {k: max(v, out["float64"][k] * up) for k, v in out["float32"].items()}
    return out


@contextlib.contextmanager
def _weights(setup: Run, state: dict[str, np.ndarray]):
    """The run's weights are ``state`` for the block (every backend made in it loads them)."""
    before, setup.state = setup.state, state
    try:
        yield
    finally:
        setup.state = before


def _bend(setup: Run, x, y) -> list[Row]:
    """The forward and gradient rows with every Linear and convolution weight times BEND_SCALE."""
    kinds = setup.config.layout.kinds
    scaled = {path + ".weight" for path, kind in kinds.items() if kind in WEIGHTED}
    if not scaled & setup.state.keys():
        return []
    state = {k: (v * np.float32(BEND_SCALE) if k in scaled else v) for k, v in setup.state.items()}
    with _weights(setup, state):
        rows = forward_and_gradient(setup, x, y)
    section = f"probe (Linear and conv weights x{BEND_SCALE:g}: GELU-like bends)"
    return [
        replace(r, section=section, kind="probe bend" if r.kind in ("output", "loss", "gradient") else r.kind)
        for r in rows
    ]


def _pool_ties(setup: Run, everyone, x, y) -> list[Row]:
    """Gradients where every 2x2 window a max-pool reads is an exact tie (the pool's tie rule
    decides where the gradient goes); none where no input and alignment makes such ties."""
    kinds = setup.config.layout.kinds
    centred = dict(setup.state)
    for path, kind in kinds.items():
        w = setup.state.get(path + ".weight")
        if kind == "conv" and w is not None and w.ndim == 4 and all(s % 2 for s in w.shape[2:]):
            only = np.zeros_like(w)
            h, v = w.shape[2] // 2, w.shape[3] // 2
            only[:, :, h, v] = w[:, :, h, v]
            centred[path + ".weight"] = only
    ref64 = everyone[1]
    best, best_ties, total = None, 0, 0
    _load(everyone[1:2], centred)
    for offset in ((0, 0), (0, 1), (1, 0), (1, 1)):
        xb = _blocks(x, offset)
        acts = ref64.activations(batch.cast(xb, "float64"))
        ties, windows = 0, 0
        for name in setup.config.pool_inputs:
            t, w = _tied_windows(acts.get(name))
            ties, windows = ties + t, windows + w
        if ties > best_ties:
            best, best_ties, total = xb, ties, windows
    if best is None or best_ties < total // 4:  # no alignment gives ties that carry gradient
        return []
    note = f"{best_ties} of {total} pool windows tied above 0"
    return _gradient_rows(setup, everyone, centred, best, y, "max-pool ties: grad", "probe pool", note)


def _blocks(x, offset: tuple[int, int]):
    """Every float ``[N, C, H, W]`` input constant on 2x2 blocks starting at ``offset``."""

    def block(a):
        if not (batch.is_float(a) and a.ndim == 4):
            return a
        rows = np.clip(offset[0] + 2 * ((np.arange(a.shape[2]) - offset[0]) // 2), 0, a.shape[2] - 1)
        cols = np.clip(offset[1] + 2 * ((np.arange(a.shape[3]) - offset[1]) // 2), 0, a.shape[3] - 1)
        return np.ascontiguousarray(a[:, :, rows][:, :, :, cols])

    return batch.tree_map(block, x)


def _tied_windows(a) -> tuple[int, int]:
    """``(windows whose maximum is above 0 and taken at least twice, all windows)`` of a
    ``[N, C, H, W]`` map read by a 2x2 stride-2 max-pool."""
    if a is None or a.ndim != 4:
        return 0, 0
    n, c, h, w = a.shape
    win = a[:, :, : h - h % 2, : w - w % 2].reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // 2, w // 2, 4)
    top = win.max(-1)
    tied = (np.sum(win == top[..., None], axis=-1) >= 2) & (top > 0)
    return int(tied.sum()), int(top.size)
