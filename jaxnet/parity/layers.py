"""Forward and gradient rows: every layer's output, the ReLU and max-pool choices, the loss and
every gradient on one batch, and probes at the edges (ReLU exactly at 0, extreme logits).

Both sides get the same weights and inputs; torch is the reference. A row's floor is the
reference's own float32 error on that quantity (:func:`verdict.ladder_floor`). Examples at a
tie (a pre-activation within rounding of 0, a max-pool window's two largest within rounding of
each other) that the two sides decide differently are left out of the loss and gradients,
where they legitimately differ by O(1).
"""

from __future__ import annotations

import numpy as np

from jaxnet.parity import verdict
from jaxnet.parity.report import Row
from jaxnet.parity.sections import Run

EXTREME_SCALE = 1e4  # last-layer scale for the log-softmax probe: logit gaps of ~1e3

DROPOUT_NOTE = (
    "compared in eval mode (off) and in train mode with the same masks handed to both sides; "
    "the frameworks' own draws differ by design (torch's Philox/MT stream against JAX's "
    "threefry keys), so training runs with dropout are compared on outcomes, and optimizer "
    "steps here run in eval mode"
)


def shared_masks(setup: Run, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """One 0/1 keep-mask per dropout (keep probability ``1 - p``), drawn with numpy, shaped
    like the dropout's input (its eval-mode output) in torch's layout."""
    acts = setup.backend("torch", "float32").activations(x)
    rng = np.random.default_rng([seed, 7])
    return {
        name: (rng.random(acts[name].shape) >= p).astype(np.float32)
        for name, p in setup.config.dropouts.items()
        if name in acts  # a dropout the forward never calls needs no mask
    }


def forward_and_gradient(
    setup: Run, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray] | None = None
) -> list[Row]:
    """Every layer's output, the ReLU masks, the loss and every gradient on one batch.

    ``masks`` (``{dropout name: 0/1 array}``, torch layout): both sides' dropouts apply these
    instead of being off (train mode on the same draw); the rows' sections say so.
    """
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
    mode = " (train mode, shared dropout masks)" if masks else ""
    rows: dict[str, list[Row]] = {"forward": [], "gradient": []}
    x64 = x.astype(np.float64)
    acts32, acts64 = ref.activations(x, masks), ref64.activations(x64, masks)
    for dtype, side in sides.items():
        acts_t = acts32 if dtype == "float32" else acts64
        acts_j = side.activations(x.astype(dtype), masks)
        names = [k for k in acts32 if k in acts_j]  # torch's order; one side's extras are not compared
        floors = {k: verdict.ladder_floor(acts32[k], acts64[k], dtype, setup.factors[dtype]) for k in names}
        for name in names:
            rows["forward"].append(
                verdict.normwise("forward" + mode, name, dtype, acts_j[name], acts_t[name], floors[name])
            )
        relus = [n for n in setup.config.relu_inputs if n in floors]
        pools = [n for n in setup.config.pool_inputs if n in floors]
        tied, counts = verdict.tied_examples(acts_j, acts_t, acts32, acts64, relus, floors, pools)
        for name, (flips, ties) in counts.items():
            what = "max-pool choice reading" if name in pools else "ReLU mask after"
            quantity = f"{what} {name}: {flips} flip(s), {ties} at ties"
            rows["forward"].append(
                verdict.count("forward" + mode, quantity, dtype, flips - ties, 0, 0, "flips away from a tie")
            )
        keep = np.array([i for i in range(len(y)) if i not in tied], dtype=np.int64)
        note = f"{len(tied)} example(s) at a tie left out" if tied else ""
        kept = {k: m[keep] for k, m in masks.items()} if masks else None
        loss32, g32 = ref.loss_and_grads(x[keep], y[keep], kept)
        loss64, g64 = ref64.loss_and_grads(x64[keep], y[keep], kept)
        loss_j, g_j = side.loss_and_grads(x[keep].astype(dtype), y[keep], kept)
        loss_t, g_t = (loss32, g32) if dtype == "float32" else (loss64, g64)
        floor = verdict.ladder_floor(np.float64(loss32), np.float64(loss64), dtype, setup.factors[dtype])
        rows["forward"].append(
            verdict.normwise(
                "forward" + mode, "loss", dtype, np.float64(loss_j), np.float64(loss_t), floor, note
            )
        )
        for name in g_t:
            if name not in g_j:
                continue  # a parameter one side lacks cannot get here: the weights were loaded by name
            floor = verdict.ladder_floor(g32[name], g64[name], dtype, setup.factors[dtype])
            rows["gradient"].append(
                verdict.normwise("gradient" + mode, name, dtype, g_j[name], g_t[name], floor, note)
            )
    return rows["forward"] + rows["gradient"]


def captured_names(setup: Run, x: np.ndarray) -> tuple[list[str], list[str]]:
    """The activation names each side captures on ``x`` (torch's, then jax's, in torch's words)."""
    acts_t = setup.backend("torch", "float32").activations(x)
    acts_j = setup.backend("jax", setup.dtypes[0]).activations(x.astype(setup.dtypes[0]))
    return list(acts_t), list(acts_j)


def probes(setup: Run, x: np.ndarray, y: np.ndarray) -> list[Row]:
    """Inputs at the edges: ReLU exactly at 0, and logits far beyond exp's range."""
    ref, ref64 = setup.backend("torch", "float32"), setup.backend("torch", "float64")
    sides = {d: setup.backend("jax", d) for d in setup.dtypes}
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
