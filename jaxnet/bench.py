"""``jaxnet bench``: training-loop speed of both backends, side by side, against this machine's peak.

Each path runs in its own subprocess (clean peak memory, no shared warm caches), on the real
training set, with the tutorial's recipe (SGD, lr 1e-3, batch 64):

- ``torch-tutorial``: the tutorial's loop: a DataLoader collating per-sample ``ToTensor``;
- ``torch-fast``: pre-made tensors, batches gathered by index (``TorchBackend``);
- ``jax-step``: one jitted step per batch (``JaxBackend(scan=False)``);
- ``jax-scan``: the epoch as one compiled ``lax.scan`` over device-resident data (plus the
  short tail batch), parameters and optimizer state donated.

Every number is the median of ``--epochs`` timed epochs after one warm-up epoch; the
warm-up's extra time is reported as compile (JAX) or first-epoch overhead (torch). The peak
is measured in the same run: float32 GEMM at 2048^3, and the mix of GEMM shapes one training
step of this model performs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from jaxnet.config import ModelConfig, OptimConfig

PATHS = ("torch-tutorial", "torch-fast", "jax-step", "jax-scan")
BATCH = 64


def epoch_gflop(config: ModelConfig, n: int) -> float:
    """Forward + weight gradients + input gradients of all but the first layer, 2 flops per MAC."""
    macs = [i * o for i, o in config.linear_shapes]
    return 2 * n * (2 * sum(macs) + sum(macs[1:])) / 1e9


def _step_gemms(config: ModelConfig, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one training step."""
    shapes = []
    for layer, (fan_in, fan_out) in enumerate(config.linear_shapes):
        shapes.append((batch, fan_in, fan_out))  # forward
        shapes.append((fan_in, batch, fan_out))  # weight gradient
        if layer:
            shapes.append((batch, fan_out, fan_in))  # input gradient
    return shapes


def measure_peak(config: ModelConfig, repeats: int = 5) -> dict[str, float]:
    """float32 GFLOP/s with torch (MKL/oneDNN): a 2048^3 GEMM, and this model's GEMM mix."""
    import torch

    def rate(shapes, inner):
        ops = [(torch.rand(m, k), torch.rand(k, n)) for m, k, n in shapes]
        flops = inner * sum(2 * m * k * n for m, k, n in shapes)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for _ in range(inner):
                for a, b in ops:
                    torch.mm(a, b)
            times.append(time.perf_counter() - start)
        return flops / statistics.median(times[1:]) / 1e9

    return {
        "square_2048": rate([(2048, 2048, 2048)], 1),
        "model_shapes": rate(_step_gemms(config, BATCH), 50),
    }


# ---------------------------------------------------------------------------- one path (worker)


def _epoch_fn(path: str, train_limit: int):
    """Build the model and data for ``path``; return a function that runs one epoch."""
    from jaxnet import checkpoint, data

    ds = data.load()
    images, labels = ds.train.images, ds.train.labels
    if train_limit:
        images, labels = images[:train_limit], labels[:train_limit]
    n, config = len(labels), ModelConfig()
    state = checkpoint.init_state_dict(config, 0)
    batches = [data.epoch_order(n, seed=0, epoch=0)[s] for s in data.batch_slices(n, BATCH)]
    test_x, test_y = ds.test.float_images(), ds.test.labels
    if path == "torch-tutorial":
        import torch

        import torchref

        model = torchref.NeuralNetwork()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        loader = torchref.tutorial_loader(images, labels)
        tx, ty = torch.from_numpy(test_x), torch.from_numpy(test_y)
        return (
            lambda: torchref.train_loop(loader, n, model, optimizer, log=None),
            lambda: torchref.evaluate(model, tx, ty),
        )
    from jaxnet.backends import get_backend
    from jaxnet.backends.jax import JaxBackend

    if path == "jax-step":
        backend = JaxBackend(config, scan=False)
        backend.load_state_dict(state)
    else:
        backend = get_backend(path.split("-")[0], config, state=state)
    backend.set_optimizer(OptimConfig())
    backend.set_train_data(data.to_float(images)[:, None], labels)
    return (lambda: backend.train_steps(batches)), (lambda: backend.evaluate(test_x, test_y))


def run_worker(path: str, epochs: int, train_limit: int) -> dict:
    t0 = time.perf_counter()
    run_epoch, evaluate = _epoch_fn(path, train_limit)
    setup = time.perf_counter() - t0
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - start)
    eval_times = []
    for _ in range(4):
        start = time.perf_counter()
        evaluate()
        eval_times.append(time.perf_counter() - start)
    median = statistics.median(times[1:])
    return {
        "path": path,
        "setup_s": setup,
        "first_epoch_s": times[0],
        "epoch_s": median,
        "epoch_times": times[1:],
        "compile_s": max(0.0, times[0] - median),
        "eval_s": statistics.median(eval_times[1:]),
        "eval_first_s": eval_times[0],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------------------- the table


def run_bench(paths: tuple[str, ...], epochs: int, train_limit: int) -> dict:
    config = ModelConfig()
    results = []
    for path in paths:
        cmd = [
            sys.executable,
            "-m",
            "jaxnet.bench",
            "--worker",
            path,
            "--epochs",
            str(epochs),
            "--train-limit",
            str(train_limit),
        ]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode != 0:
            raise RuntimeError(f"bench worker {path} failed:\n{out.stderr[-2000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["process_s"] = time.perf_counter() - started
        results.append(row)
    peak = measure_peak(config)
    n = train_limit or 60000
    gflop = epoch_gflop(config, n)
    base = next((r["epoch_s"] for r in results if r["path"] == "torch-tutorial"), None)
    for r in results:
        r["samples_per_s"] = n / r["epoch_s"]
        r["gflops"] = gflop / r["epoch_s"]
        r["pct_square_peak"] = 100 * r["gflops"] / peak["square_2048"]
        r["pct_model_peak"] = 100 * r["gflops"] / peak["model_shapes"]
        r["speedup_vs_tutorial"] = base / r["epoch_s"] if base else None
        r["startup_compile_s"] = r["setup_s"] + r["compile_s"]
    return {
        "peak_gflops": peak,
        "epoch_gflop": gflop,
        "samples": n,
        "epochs": epochs,
        "machine": _machine(),
        "results": results,
    }


def _machine() -> str:
    import platform

    import jax
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    peak = report["peak_gflops"]
    title = (
        f"{report['samples']} samples/epoch, {report['epoch_gflop']:.1f} GFLOP/epoch, median of {report['epochs']} epochs; "
        f"measured peak {peak['square_2048']:.0f} GFLOP/s (2048^3), {peak['model_shapes']:.0f} GFLOP/s (this model's GEMMs)"
    )
    table = Table(title=title, caption=report["machine"])
    for col in ("path", "epoch s", "samples/s", "GFLOP/s", "% peak", "% model-GEMM peak", "x tutorial", "compile s", "start+compile s", "eval 10k s", "peak RSS MB"):  # fmt: skip
        table.add_column(col, justify="right" if col != "path" else "left")
    for r in report["results"]:
        speedup = f"{r['speedup_vs_tutorial']:.2f}" if r["speedup_vs_tutorial"] else "-"
        table.add_row(
            r["path"],
            f"{r['epoch_s']:.3f}",
            f"{r['samples_per_s']:,.0f}",
            f"{r['gflops']:.1f}",
            f"{r['pct_square_peak']:.0f}%",
            f"{r['pct_model_peak']:.0f}%",
            speedup,
            f"{r['compile_s']:.2f}",
            f"{r['startup_compile_s']:.2f}",
            f"{r['eval_s']:.4f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console = Console()
    if not console.is_terminal:  # piped or redirected: don't squeeze the table into 80 columns
        console = Console(width=180)
    console.print(table)


if __name__ == "__main__":  # the per-path worker: python -m jaxnet.bench --worker PATH ...
    worker = argparse.ArgumentParser()
    worker.add_argument("--worker", choices=PATHS, required=True)
    worker.add_argument("--epochs", type=int, default=3)
    worker.add_argument("--train-limit", type=int, default=0)
    w = worker.parse_args()
    print(json.dumps(run_worker(w.worker, w.epochs, w.train_limit)))
