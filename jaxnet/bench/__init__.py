"""``jaxnet bench``: training-loop speed of both backends beside this machine's own limits.

Every path and every limit runs in its own process holding one framework (a live JAX client
slows torch in the same process, and peak memory stays per path), on the real training set
with the tutorial's recipe (SGD, lr 1e-3, batch 64):

- ``torch-tutorial``: the tutorial's loop, a DataLoader collating per-sample ``ToTensor``;
- ``torch-plain``: a plain torch loop over pre-made tensors, the reference a torch user writes;
- ``torch-jaxnet``: jaxnet's torch backend (``TorchBackend.train_steps``);
- ``jax-plain``: a plain JAX loop, one jitted step per host batch (what e09 teaches);
- ``jax-jaxnet-step``: jaxnet's JAX backend, one jitted step per batch gathered on device;
- ``jax-jaxnet-scan``: the same, the epoch as compiled ``lax.scan`` runs (the default).

``--model cnn`` times PyTorch ``examples/mnist``'s CNN with its recipe (Adadelta, dropout on):

- ``cnn-torch-plain``: ``examples/mnist``'s ``train()`` loop over pre-made tensors;
- ``cnn-torch-jaxnet``, ``cnn-jax-jaxnet``: jaxnet's backends (one jitted step per batch in
  JAX: a ``lax.scan`` over conv steps runs slower on XLA's CPU backend);
- ``cnn-jax-fastconv``: the same JAX path, its ``nnx.Conv`` layers computing as im2col + one
  GEMM with their own gradient (:mod:`jaxnet.fastconv`).

Epoch times are medians of ``--epochs`` timed epochs after a warm-up one (its extra time is
reported as compile). The limits are the machine's, the same for every path
(:mod:`jaxnet.bench.limits`): every GEMM and convolution of one training step timed in torch
and in XLA (best of several trials; a convolution also as its im2col GEMMs), the fastest of
any framework per kernel summed into the step's floor; and the cores' float32 FMA peak,
derived from /proc/cpuinfo with its derivation printed. Every path's row gives its share of
its model's floor and of the FMA peak; a 2048^3 GEMM per framework is shown beside.
Start-up is the wall time of whole commands (``jaxnet eval``, ``jaxnet predict``) against a
bare ``import jax, flax.nnx, optax``. A worker that fails is a row with its error; the
others still run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from jaxnet.config import CNNConfig, ModelConfig

PATHS = ("torch-tutorial", "torch-plain", "torch-jaxnet", "jax-plain", "jax-jaxnet-step", "jax-jaxnet-scan")
CNN_PATHS = ("cnn-torch-plain", "cnn-torch-jaxnet", "cnn-jax-jaxnet", "cnn-jax-fastconv")
BATCH = 64
TRIALS = 7


def is_cnn(path: str) -> bool:
    return path.startswith("cnn-")


def model_of(path: str) -> ModelConfig | CNNConfig:
    from jaxnet import registry

    return registry.family("cnn" if is_cnn(path) else "mlp").config()


def framework_of(path: str) -> str:
    return path.removeprefix("cnn-").split("-")[0]


def epoch_gflop(config: ModelConfig | CNNConfig, n: int) -> float:
    """Forward + weight gradients + input gradients of all but the first layer, 2 flops per MAC."""
    if isinstance(config, CNNConfig):  # 3x3 valid convs on 28x28, then 26x26 -> 24x24 -> pool 12x12
        (c1, c2), h = config.channels, config.hidden
        macs = [26 * 26 * 9 * c1, 24 * 24 * 9 * c1 * c2, 12 * 12 * c2 * h, h * config.num_classes]
    else:
        macs = [i * o for i, o in config.linear_shapes]
    return 2 * n * (2 * sum(macs) + sum(macs[1:])) / 1e9


# ---------------------------------------------------------------------------- the run and its table


def _spawn(*args: str) -> dict:
    cmd = [sys.executable, "-m", "jaxnet.bench.workers", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        return {"error": f"bench worker {' '.join(args)} failed: {lines[-1][:300]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wall(cmd: list[str], repeats: int = 3) -> float:
    """Median wall time of a whole command, start to exit."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def startup() -> dict[str, float]:
    """Seconds from command to exit: the bare imports, and jaxnet's everyday commands."""
    from jaxnet import checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "checkpoint")
        checkpoint.save(
            ckpt,
            checkpoint.Checkpoint(model=checkpoint.init_state_dict(ModelConfig(), 0), config=ModelConfig()),
        )
        jaxnet = [sys.executable, "-m", "jaxnet"]
        return {
            "import jax, flax.nnx, optax": _wall([sys.executable, "-c", "import jax, flax.nnx, optax"]),
            "import torch": _wall([sys.executable, "-c", "import torch"]),
            "jaxnet eval": _wall([*jaxnet, "eval", "--checkpoint", ckpt]),
            "jaxnet predict": _wall([*jaxnet, "predict", "--checkpoint", ckpt]),
            "jaxnet train (64 images)": _wall([*jaxnet, "train", "--epochs", "1", "--train-limit", "64"]),
        }


def run_bench(
    paths: tuple[str, ...], epochs: int, train_limit: int, with_startup: bool = True, devices: int = 1
) -> dict:
    models = tuple(dict.fromkeys("cnn" if is_cnn(p) else "mlp" for p in paths))
    peaks = {fw: _spawn("--limits", fw, "--models", *models) for fw in ("torch", "jax")}
    results = []
    for p in paths:
        result = _spawn("--worker", p, "--epochs", str(epochs), "--train-limit", str(train_limit))
        results.append(result if "error" not in result else {"path": p, **result})
    if devices > 1:
        results += [
            data_parallel(backend, n, epochs, train_limit)
            for backend in ("torch", "jax")
            for n in (1, devices)
        ]
    return summarise(peaks, results, epochs, train_limit or 60000, startup() if with_startup else {})


def data_parallel(backend: str, devices: int, epochs: int, train_limit: int) -> dict:
    """A whole ``jaxnet train --devices N`` run; epoch time from its metrics (after the first).

    torch runs N processes (gloo on CPUs), JAX one process with N devices (virtual on a CPU):
    on one CPU they show what the communication costs, not a speed-up.
    """
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        cmd = [sys.executable, "-m", "jaxnet", "train", "--backend", backend, "--devices", str(devices),
               "--epochs", str(epochs + 1), "--metrics", metrics]  # fmt: skip
        cmd += ["--train-limit", str(train_limit)] if train_limit else []
        subprocess.run(cmd, capture_output=True, check=True)
        with open(metrics) as lines:
            seconds = [json.loads(line)["seconds"] for line in lines]
    name = f"{backend}-{'ddp' if backend == 'torch' else 'mesh'}-{devices}"
    return {"path": name, "epoch_s": statistics.median(seconds[1:]), "epoch_times": seconds[1:],
            "compile_s": max(0.0, seconds[0] - statistics.median(seconds[1:])), "eval_s": float("nan"),
            "peak_rss_mb": float("nan"), "setup_s": float("nan")}  # fmt: skip


def summarise(peaks: dict, results: list[dict], epochs: int, n: int, startup: dict[str, float]) -> dict:
    """Derived columns: throughput, GFLOP/s, the share of the model's floor (the fastest kernel
    of any framework per GEMM and convolution of a step, times the steps of an epoch) and of
    the cores' FMA peak, x its plain loop (of the same model and framework). Failed workers
    (an ``error`` key) stay as rows without numbers."""
    from jaxnet.bench import limits

    gflop = {cnn: epoch_gflop(CNNConfig() if cnn else ModelConfig(), n) for cnn in (False, True)}
    steps = -(-n // BATCH)
    kernels = {fw: p["kernels"] for fw, p in peaks.items() if "kernels" in p}
    floors = {}
    for cnn in (False, True):
        config = CNNConfig() if cnn else ModelConfig()
        if kernels and all(k.name in t for k in limits.step_kernels(config) for t in kernels.values()):
            floors["cnn" if cnn else "mlp"] = limits.floors(kernels, config) | {"epoch_s": None}
    for floor in floors.values():
        floor["epoch_s"] = floor["step_s"] * steps
    fma_text, fma = limits.fma_peak()
    ok = [r for r in results if "error" not in r]
    plain = {
        (is_cnn(r["path"]), framework_of(r["path"])): r["epoch_s"] for r in ok if r["path"].endswith("-plain")
    }
    one = {r["path"].split("-")[0]: r["epoch_s"] for r in ok if r["path"].endswith(("-ddp-1", "-mesh-1"))}
    for r in ok:
        framework, cnn = framework_of(r["path"]), is_cnn(r["path"])
        floor = floors.get("cnn" if cnn else "mlp")
        r["samples_per_s"] = n / r["epoch_s"]
        r["gflops"] = gflop[cnn] / r["epoch_s"]
        r["pct_floor"] = None if floor is None else 100 * floor["epoch_s"] / r["epoch_s"]
        r["pct_fma_peak"] = 100 * r["gflops"] / fma if fma == fma else None
        key = (cnn, framework)
        r["vs_plain"] = plain[key] / r["epoch_s"] if key in plain else None
        if r["path"].endswith(("-ddp-1", "-mesh-1")) or not r["path"][-1].isdigit():
            r["vs_one_device"] = None
        else:
            r["vs_one_device"] = one[framework] / r["epoch_s"]
    return {
        "peak_gflops": peaks,
        "floors": floors,
        "fma_peak": {"gflops": fma, "derivation": fma_text},
        "epoch_gflop": gflop[False],
        "cnn_epoch_gflop": gflop[True],
        "samples": n,
        "epochs": epochs,
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "results": results,
        "startup_s": startup,
    }


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=200)

    def num(x, fmt: str) -> str:
        return "-" if x is None or x != x else format(x, fmt)  # None or NaN: not measured on this path

    fma = report["fma_peak"]
    console.print(f"float32 FMA peak of the cores (derived): {fma['derivation']}")
    peaks = report["peak_gflops"]
    for fw, p in peaks.items():
        if "error" in p:
            console.print(f"{fw} limits: {p['error']}", style="bold red")
        else:
            share = (
                f", {100 * p['square_2048'] / fma['gflops']:.0f}% of the FMA peak"
                if fma["gflops"] == fma["gflops"]
                else ""
            )
            console.print(f"{fw} on {p['device']}: GEMM 2048^3 {p['square_2048']:.0f} GFLOP/s{share}")
    for model, floor in report.get("floors", {}).items():
        kernels = Table(title=f"the {model}'s step floor: the fastest kernel of any framework per product, "
                        f"best of {TRIALS} (ms, batch {BATCH})")  # fmt: skip
        options = sorted({o for k in floor["kernels"].values() for o in k["options"]})
        for col in ("kernel", *options, "floor", "GFLOP/s"):
            kernels.add_column(col, justify="left" if col == "kernel" else "right")
        for name, k in floor["kernels"].items():
            cells = [num(1e3 * k["options"].get(o, float("nan")), ".3f") for o in options]
            kernels.add_row(
                name,
                *cells,
                f"{1e3 * k['seconds']:.3f} ({k['best']})",
                f"{k['flop'] / k['seconds'] / 1e9:.0f}",
            )
        kernels.caption = (f"one step ({len(floor['kernels'])} kernels, repeats counted): {1e3 * floor['step_s']:.2f} ms, "
                           f"{floor['step_gflop'] / floor['step_s']:.0f} GFLOP/s; the epoch's floor {floor['epoch_s']:.2f} s")  # fmt: skip
        console.print(kernels)
    title = (f"{report['samples']} samples/epoch, {report['epoch_gflop']:.1f} GFLOP/epoch (the CNN: "
             f"{report['cnn_epoch_gflop']:.1f}), median of {report['epochs']} epochs")  # fmt: skip
    table = Table(title=title)
    cols = ("path", "device", "epoch s", "samples/s", "GFLOP/s", "% floor", "% FMA peak", "x plain loop",
            "x one device", "compile s", "eval 10k s", "peak RSS MB")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("path", "device") else "right")
    for r in report["results"]:
        if "error" in r:
            table.add_row(r["path"], "error", r["error"], style="bold red")
            continue
        table.add_row(r["path"], r.get("device", "-"), f"{r['epoch_s']:.3f}", f"{r['samples_per_s']:,.0f}",
                      f"{r['gflops']:.1f}", num(r["pct_floor"], ".0f"), num(r["pct_fma_peak"], ".0f"),
                      num(r["vs_plain"], ".2f"), num(r.get("vs_one_device"), ".2f"), f"{r['compile_s']:.2f}",
                      num(r["eval_s"], ".4f"), num(r["peak_rss_mb"], ".0f"))  # fmt: skip
    console.print(table)
    if report["startup_s"]:
        start = Table(title="start-up: command to exit, median of 3 (s)")
        start.add_column("command")
        start.add_column("s", justify="right")
        for name, seconds in report["startup_s"].items():
            start.add_row(name, f"{seconds:.2f}")
        console.print(start)
