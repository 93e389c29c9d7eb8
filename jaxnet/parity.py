"""``jaxnet parity``: whether, where and by how much the two backends disagree.

Both backends get the same weights and the same real Fashion-MNIST batches. Compared, each
against a tolerance from :mod:`jaxnet.compare`'s rounding model:

- forward: every layer's output, the ReLU masks, the softmax and the loss;
- gradient: every parameter's gradient;
- probes: the gradient where pre-activations are exactly 0 (ReLU's derivative at 0) and the
  loss on extreme logits (log-softmax stability);
- step: the parameters after each of N optimizer steps, for each optimizer recipe;
- epoch: the parameters after one full epoch, and the test-set predictions of both models.

With ``--dtype both``, every float32 row is also measured against a float64 run of the same
computation (the float32 weights upcast), which says whether one backend deviates or both sit
within float32 noise.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jaxnet import checkpoint
from jaxnet.argtypes import nonneg_int, positive_int
from jaxnet.compare import Error, adam_amplification, compare, mask_flips, reductions, rel_error, tolerance
from jaxnet.config import DEVICES, RECIPES, ModelConfig
from jaxnet.data import FashionMNIST, batch_slices, epoch_order
from jaxnet.errors import JaxnetError

if TYPE_CHECKING:
    from jaxnet.backend import Backend

BATCH = 64
EXTREME_SCALE = 1e4  # last-layer scale for the log-softmax probe: logit gaps of ~1e3


@dataclass
class Row:
    section: str
    quantity: str
    dtype: str
    error: Error
    tol: float
    passed: bool
    vs_f64: str = ""  # float32 rows: each side's error against the float64 run, and the verdict


@dataclass
class Report:
    rows: list[Row]
    environment: dict[str, str]
    histories: dict[str, dict[str, list[float]]] = field(
        default_factory=dict
    )  # "dtype recipe" -> param -> rel per step
    tolerances: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # same keys -> tol per step
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]


def _verdict(jax_err: float, torch_err: float, tol: float) -> str:
    side = {
        (True, True): "both within float32 noise",
        (False, True): "jax deviates",
        (True, False): "torch deviates",
    }
    verdict = side.get((jax_err <= tol, torch_err <= tol), "both deviate")
    return f"jax {jax_err:.1e} / torch {torch_err:.1e}: {verdict}"


class _Recorder:
    """Collects rows for one dtype; with a float64 reference, fills the vs-float64 column."""

    def __init__(
        self, dtype: str, reference: dict[str, np.ndarray] | None, keep: dict[str, np.ndarray] | None
    ):
        self.dtype, self.reference, self.keep, self.rows = dtype, reference, keep, []

    def add(
        self, section: str, quantity: str, jax_value, torch_value, tol: float, passed: bool | None = None
    ) -> Error:
        err = compare(np.asarray(jax_value), np.asarray(torch_value))
        ok = err.within(tol) if passed is None else passed
        key = f"{section}/{quantity}"
        vs = ""
        if self.reference is not None and key in self.reference:
            ref = self.reference[key]
            vs = _verdict(
                compare(np.asarray(jax_value), ref).rel, compare(np.asarray(torch_value), ref).rel, tol
            )
        if self.keep is not None:  # this is the float64 run: keep torch's values as the reference
            self.keep[key] = np.asarray(torch_value, dtype=np.float64)
        self.rows.append(Row(section, quantity, self.dtype, err, tol, bool(ok), vs))
        return err


def _pair(
    config: ModelConfig, dtype: str, device: str, state: dict[str, np.ndarray]
) -> tuple[Backend, Backend]:
    from jaxnet.backend import get_backend

    return (
        get_backend("jax", config, dtype=dtype, device=device, state=state),
        get_backend("torch", config, dtype=dtype, device=device, state=state),
    )


def _forward_and_gradient(
    rec: _Recorder, jb: Backend, tb: Backend, x, y, red: dict[str, int], matmul: str
) -> None:
    tol_f = tolerance(rec.dtype, red["forward"], matmul=matmul)
    acts_j, acts_t = jb.activations(x), tb.activations(x)
    for name in acts_j:
        rec.add("forward", name, acts_j[name], acts_t[name], tol_f)
    for i in range(0, 2 * len(jb.config.hidden), 2):  # each Linear that feeds a ReLU
        pre_j, pre_t = acts_j[f"linear_relu_stack.{i}"], acts_t[f"linear_relu_stack.{i}"]
        flips = mask_flips(pre_j, pre_t)
        scale = np.abs(pre_t).max()
        ties = sum(abs(pre_t[r, c]) <= tol_f * scale for r, c in flips)  # rounding-level ties are fine
        rec.add(
            "forward", f"relu mask {i + 1}: {len(flips)} flips, {ties} at ties", len(flips) - ties, 0, 0.0
        )
    loss_j, grads_j = jb.loss_and_grads(x, y)
    loss_t, grads_t = tb.loss_and_grads(x, y)
    rec.add(
        "forward",
        "loss",
        np.float64(loss_j),
        np.float64(loss_t),
        tolerance(rec.dtype, red["loss"], matmul=matmul),
    )
    for name in grads_j:
        rec.add(
            "gradient", name, grads_j[name], grads_t[name], tolerance(rec.dtype, red["grad"], matmul=matmul)
        )


def _probes(rec: _Recorder, pair, config: ModelConfig, state, x, y, red: dict[str, int], matmul: str) -> None:
    """Inputs at the edges: ReLU exactly at 0, and logits far beyond exp's range.

    Loads probe weights into ``pair``; the caller reloads ``state`` before training.
    """
    jb, tb = pair
    zero_bias = {k: (np.zeros_like(v) if k.endswith("bias") else v) for k, v in state.items()}
    zero = np.zeros((1, *x.shape[1:]), x.dtype)
    for backend in pair:
        backend.load_state_dict(zero_bias)
    grads_j, grads_t = jb.loss_and_grads(zero, y[:1])[1], tb.loss_and_grads(zero, y[:1])[1]
    for name in grads_j:  # all pre-activations are exactly 0: relu'(0) decides these
        rec.add(
            "probe",
            f"relu'(0): grad {name}",
            grads_j[name],
            grads_t[name],
            tolerance(rec.dtype, red["grad"], matmul=matmul),
        )
    last = f"linear_relu_stack.{2 * len(config.hidden)}"
    extreme = {k: (v * v.dtype.type(EXTREME_SCALE) if k.startswith(last) else v) for k, v in state.items()}
    for backend in pair:
        backend.load_state_dict(extreme)
    loss_j, loss_t = jb.loss_and_grads(x, y)[0], tb.loss_and_grads(x, y)[0]
    rec.add(
        "probe",
        f"loss at extreme logits (x{EXTREME_SCALE:g})",
        np.float64(loss_j),
        np.float64(loss_t),
        tolerance(rec.dtype, red["loss"], matmul=matmul),
    )


def _step_tolerances(
    opt, dtype: str, red, matmul: str, grads: dict, params: dict, steps: int
) -> dict[str, list[float]]:
    """Per parameter, the tolerance after each step; Adam's factor from the first gradient."""
    out = {}
    for name, g in grads.items():
        factor = 1.0
        if opt.name in ("adam", "adamw"):
            factor = adam_amplification(
                opt.lr, opt.eps, float(np.abs(g).max()), float(np.abs(params[name]).max())
            )
        out[name] = [
            factor * tolerance(dtype, red["grad"], steps=t, matmul=matmul) for t in range(1, steps + 1)
        ]
    return out


def _steps(rec, report, pair, recipe_name, batches, images, labels, red, matmul) -> None:
    """``len(batches)`` optimizer steps in lockstep; every step's parameters compared."""
    jb, tb = pair
    opt = replace(RECIPES[recipe_name], total_steps=len(batches))
    grads = tb.loss_and_grads(images[batches[0]], labels[batches[0]])[1]
    tols = _step_tolerances(opt, rec.dtype, red, matmul, grads, tb.state_dict(), len(batches))
    for backend in pair:
        backend.set_optimizer(opt)
    history: dict[str, list[float]] = {name: [] for name in grads}
    for idx in batches:
        jb.train_steps([idx])
        tb.train_steps([idx])
        pj, pt = jb.state_dict(), tb.state_dict()
        for name in pj:
            history[name].append(rel_error(pj[name], pt[name]))
    key = f"{rec.dtype} {recipe_name}"
    report.histories[key], report.tolerances[key] = history, tols
    for name in pj:
        passed = all(e <= t for e, t in zip(history[name], tols[name], strict=True))
        rec.add(
            f"step {len(batches)}",
            f"{recipe_name}: {name}",
            pj[name],
            pt[name],
            tols[name][-1],
            passed=passed,
        )


def _epoch(rec, pair, data: FashionMNIST, recipe_name: str, seed: int, red, matmul) -> None:
    jb, tb = pair
    n = len(data.train)
    order = epoch_order(n, seed=seed, epoch=0)
    batches = [order[s] for s in batch_slices(n, BATCH)]
    opt = replace(RECIPES[recipe_name], total_steps=len(batches))
    for backend in pair:  # the training data is already on the device
        backend.set_optimizer(opt)
        backend.train_steps(batches)
    tol = tolerance(rec.dtype, red["grad"], steps=len(batches), matmul=matmul)
    pj, pt = jb.state_dict(), tb.state_dict()
    for name in pj:
        rec.add("epoch", f"{recipe_name}: {name}", pj[name], pt[name], tol)
    x = data.test.float_images(rec.dtype)
    pred_j, pred_t = jb.predict(x).argmax(1), tb.predict(x).argmax(1)
    differ = int(np.sum(pred_j != pred_t))
    # float64 trajectories agree to ~1e-13, so no prediction may flip; float32 ones drift by
    # rounding (~1e-4 after an epoch) and may flip a near-tie: at most 0.1% of the test set.
    allowed = 0 if rec.dtype == "float64" else len(pred_j) // 1000
    rec.add(
        "epoch",
        f"test predictions differing: {differ} of {len(pred_j)}",
        float(differ),
        0.0,
        0.0,
        passed=differ <= allowed,
    )


def environment(jb: Backend, tb: Backend, matmul: str) -> dict[str, str]:
    """Devices, versions and the precision settings read at run time."""
    import flax
    import jax
    import jaxlib
    import optax
    import torch

    return {
        "python": platform.python_version(),
        "machine": platform.platform(),
        "jax": f"{jax.__version__} (jaxlib {jaxlib.__version__}), flax {flax.__version__}, optax {optax.__version__}",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "jax device": jb.describe(),
        "torch device": tb.describe(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_enable_x64": str(bool(jax.config.jax_enable_x64)),
        "torch float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch cuda.matmul.allow_tf32 / cudnn.allow_tf32": f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}",
        "matmul precision in the tolerance model": matmul,
    }


def _matmul_in_force(device: str, precision: str) -> str:
    """The coarsest float32 matmul arithmetic either side uses, for the tolerance model."""
    import jax
    import torch

    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.set_float32_matmul_precision("highest")
        return "highest"
    jax_gpu = (jax.devices()[0].platform == "gpu") if device == "auto" else device == "cuda"
    jax_reduced = jax_gpu and str(jax.config.jax_default_matmul_precision) in (
        "None",
        "default",
        "bfloat16",
        "tensorfloat32",
    )
    torch_reduced = torch.cuda.is_available() and device != "cpu" and torch.backends.cuda.matmul.allow_tf32
    return "tf32" if jax_reduced or torch_reduced else "highest"


def run_parity(
    data: FashionMNIST,
    *,
    dtypes: tuple[str, ...] = ("float64", "float32"),
    steps: int = 100,
    recipes: tuple[str, ...] = tuple(RECIPES),
    epoch_recipe: str | None = "sgd",
    device: str = "auto",
    matmul_precision: str = "highest",
    seed: int = 0,
    config: ModelConfig | None = None,
) -> Report:
    """Run every comparison; float64 first, so float32 rows can be checked against it."""
    start = time.perf_counter()
    config = config or ModelConfig()
    if "float64" in dtypes:
        from jaxnet.backend import enable_x64

        enable_x64()
        import jax.numpy as jnp

        if jnp.zeros(1, jnp.float64).dtype != np.float64:
            raise JaxnetError("float64 requested but JAX's x64 mode is off; refusing to report float64")
    matmul = _matmul_in_force(device, matmul_precision)
    state32 = checkpoint.init_state_dict(config, seed, "float32")
    train_x = data.train.float_images("float32")
    x, y = train_x[:BATCH], data.train.labels[:BATCH]
    order = epoch_order(len(data.train), seed=seed, epoch=0)
    batches = [order[s] for s in batch_slices(len(data.train), BATCH)][:steps]
    red = reductions(config.hidden, config.in_features, BATCH)
    report = Report(rows=[], environment={})
    reference: dict[str, np.ndarray] | None = None
    for dtype in sorted(dtypes, key=lambda d: d != "float64"):
        state = {k: v.astype(dtype) for k, v in state32.items()}  # float64: the float32 weights upcast
        keep = {} if dtype == "float64" and "float32" in dtypes else None
        rec = _Recorder(dtype, reference if dtype == "float32" else None, keep)
        pair = _pair(config, dtype, device, state)
        if not report.environment:
            report.environment = environment(*pair, matmul)
        _forward_and_gradient(rec, *pair, x.astype(dtype), y, red, matmul)
        _probes(rec, pair, config, state, x.astype(dtype), y, red, matmul)
        images = train_x.astype(dtype)
        for backend in pair:  # one pair per dtype: each run below restarts from ``state``
            backend.set_train_data(images, data.train.labels)
        for name in recipes:
            for backend in pair:
                backend.load_state_dict(state)
            _steps(rec, report, pair, name, batches, images, data.train.labels, red, matmul)
        if epoch_recipe is not None:
            for backend in pair:
                backend.load_state_dict(state)
            _epoch(rec, pair, data, epoch_recipe, seed, red, matmul)
        report.rows += rec.rows
        reference = keep
    report.seconds = time.perf_counter() - start
    return report


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    p.add_argument("--steps", type=positive_int, default=100, help="optimizer steps compared one by one")
    p.add_argument("--optimizer", choices=(*RECIPES, "all"), default="all", help="recipe for the step rows")
    p.add_argument(
        "--epoch-optimizer", choices=(*RECIPES, "none"), default="sgd", help="recipe of the full epoch"
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--matmul-precision", choices=("highest", "default"), default="highest")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--json", type=Path, help="write the report as JSON")
    p.add_argument("--markdown", type=Path, help="write the report as a markdown table")
    p.add_argument("--plot", type=Path, help="PNG: error against step per parameter (log scale)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import data, parity_report

    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    recipes = tuple(RECIPES) if args.optimizer == "all" else (args.optimizer,)
    report = run_parity(
        data.load(args.data_dir),
        dtypes=dtypes,
        steps=args.steps,
        recipes=recipes,
        epoch_recipe=None if args.epoch_optimizer == "none" else args.epoch_optimizer,
        device=args.device,
        matmul_precision=args.matmul_precision,
        seed=args.seed,
    )
    parity_report.print_table(report)
    if args.json:
        parity_report.write_json(report, args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(parity_report.markdown(report))
    if args.plot:
        parity_report.plot(report, args.plot)
    return 0 if report.passed else 1
