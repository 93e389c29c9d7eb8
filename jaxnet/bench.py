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

Epoch times are medians of ``--epochs`` timed epochs after a warm-up one (its extra time is
reported as compile). The limits are the best of several trials: float32 GEMM at 2048^3,
and the mix of GEMM shapes one training step of this model performs, each in torch and in
XLA. Start-up is the wall time of whole commands (``jaxnet eval``, ``jaxnet predict``)
against a bare ``import jax, flax.nnx, optax``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from jaxnet.config import ModelConfig, OptimConfig

PATHS = ("torch-tutorial", "torch-plain", "torch-jaxnet", "jax-plain", "jax-jaxnet-step", "jax-jaxnet-scan")
BATCH = 64
TRIALS = 7


def epoch_gflop(config: ModelConfig, n: int) -> float:
    """Forward + weight gradients + input gradients of all but the first layer, 2 flops per MAC."""
    macs = [i * o for i, o in config.linear_shapes]
    return 2 * n * (2 * sum(macs) + sum(macs[1:])) / 1e9


def step_gemms(config: ModelConfig, batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one training step."""
    shapes = []
    for layer, (fan_in, fan_out) in enumerate(config.linear_shapes):
        shapes.append((batch, fan_in, fan_out))  # forward
        shapes.append((fan_in, batch, fan_out))  # weight gradient
        if layer:
            shapes.append((batch, fan_out, fan_in))  # input gradient
    return shapes


# ---------------------------------------------------------------------------- workers (one framework each)


def limits(framework: str, trials: int = TRIALS) -> dict[str, float]:
    """float32 GFLOP/s, best of ``trials``: a 2048^3 GEMM, and 50 training steps' worth of this
    model's GEMM shapes."""
    shapes = step_gemms(ModelConfig(), BATCH)
    rng = np.random.default_rng(0)
    pairs = [(rng.random((m, k), np.float32), rng.random((k, n), np.float32)) for m, k, n in shapes]
    square = rng.random((2048, 2048), np.float32)
    if framework == "torch":
        import torch

        pairs_t = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in pairs]
        square_t = torch.from_numpy(square)

        def run_square():
            torch.mm(square_t, square_t)

        def run_mix():
            for _ in range(50):
                for a, b in pairs_t:
                    torch.mm(a, b)
    else:
        import jax
        import jax.numpy as jnp

        mm = jax.jit(jnp.dot)
        pairs_j = [(jnp.asarray(a), jnp.asarray(b)) for a, b in pairs]
        square_j = jnp.asarray(square)
        mix = jax.jit(lambda ps: [jnp.dot(a, b) for a, b in ps])
        mix(pairs_j)[0].block_until_ready()
        mm(square_j, square_j).block_until_ready()

        def run_square():
            mm(square_j, square_j).block_until_ready()

        def run_mix():
            for _ in range(50):
                jax.block_until_ready(mix(pairs_j))

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    mix_flop = 50 * sum(2 * m * k * n for m, k, n in shapes)
    return {"square_2048": 2 * 2048**3 / best(run_square) / 1e9, "model_mix": mix_flop / best(run_mix) / 1e9}


def _epoch_fn(path: str, train_limit: int):
    """Build ``path``'s model and data; return (run one epoch, evaluate the test set)."""
    from jaxnet import checkpoint, data

    ds = data.load()
    images, labels = ds.train.images, ds.train.labels
    if train_limit:
        images, labels = images[:train_limit], labels[:train_limit]
    n, config = len(labels), ModelConfig()
    state = checkpoint.init_state_dict(config, 0)
    batches = [data.epoch_order(n, seed=0, epoch=0)[s] for s in data.batch_slices(n, BATCH)]
    x, test_x, test_y = data.to_float(images)[:, None], ds.test.float_images(), ds.test.labels
    if path.startswith("torch-") and path != "torch-jaxnet":
        return _torch_loop(path, state, images, labels, x, batches, test_x, test_y)
    if path == "jax-plain":
        return _jax_loop(state, x, labels, batches, test_x, test_y)
    from jaxnet.backends import get_backend
    from jaxnet.backends.jax import JaxBackend

    if path == "jax-jaxnet-step":
        backend = JaxBackend(config, scan=False, state=state)
    else:
        backend = get_backend(path.split("-")[0], config, state=state)
    backend.set_optimizer(OptimConfig())
    backend.set_train_data(x, labels)
    return (lambda: backend.train_steps(batches)), (lambda: backend.evaluate(test_x, test_y))


def _torch_loop(path, state, images, labels, x, batches, test_x, test_y):
    import torch

    import torchref

    model = torchref.NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(test_x), torch.from_numpy(test_y)
    evaluate = lambda: torchref.evaluate(model, tx, ty)  # noqa: E731
    if path == "torch-tutorial":
        loader = torchref.tutorial_loader(images, labels)
        return (lambda: torchref.train_loop(loader, len(labels), model, optimizer, log=None)), evaluate
    loss_fn, X, Y = torch.nn.CrossEntropyLoss(), torch.tensor(x), torch.tensor(labels)
    index = [torch.from_numpy(b) for b in batches]

    def epoch():  # what a torch user writes over pre-made tensors
        for i in index:
            loss = loss_fn(model(X[i]), Y[i])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return epoch, evaluate


def _jax_loop(state, x, labels, batches, test_x, test_y):
    import jax
    import optax
    from flax import nnx

    from jaxnet import model as jmodel
    from jaxnet import train as jtrain

    graphdef, params = nnx.split(jmodel.build(ModelConfig()), nnx.Param)
    params = jmodel.from_torch_layout(params, state)
    tx = optax.sgd(1e-3)
    opt_state = [tx.init(params)]
    holder = [params]

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(jtrain.loss_fn)(params, graphdef, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def epoch():  # host batches, one jitted step each
        for b in batches:
            holder[0], opt_state[0], _ = step(holder[0], opt_state[0], x[b], labels[b])
        jax.block_until_ready(holder[0])

    evaluate = jax.jit(jtrain.evaluate, static_argnums=0)
    return epoch, (lambda: jax.block_until_ready(evaluate(graphdef, holder[0], test_x, test_y)))


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
        "epoch_s": median,
        "epoch_times": times[1:],
        "compile_s": max(0.0, times[0] - median),
        "eval_s": statistics.median(eval_times[1:]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---------------------------------------------------------------------------- the run and its table


def _spawn(*args: str) -> dict:
    cmd = [sys.executable, "-m", "jaxnet.bench", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"bench worker {args} failed:\n{out.stderr[-2000:]}")
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


def run_bench(paths: tuple[str, ...], epochs: int, train_limit: int, with_startup: bool = True) -> dict:
    peaks = {fw: _spawn("--limits", fw) for fw in ("torch", "jax")}
    results = [
        _spawn("--worker", p, "--epochs", str(epochs), "--train-limit", str(train_limit)) for p in paths
    ]
    return summarise(peaks, results, epochs, train_limit or 60000, startup() if with_startup else {})


def summarise(peaks: dict, results: list[dict], epochs: int, n: int, startup: dict[str, float]) -> dict:
    """Derived columns: throughput, GFLOP/s, share of each framework's peaks, x its plain loop."""
    gflop = epoch_gflop(ModelConfig(), n)
    plain = {r["path"].split("-")[0]: r["epoch_s"] for r in results if r["path"].endswith("-plain")}
    for r in results:
        framework = r["path"].split("-")[0]
        r["samples_per_s"] = n / r["epoch_s"]
        r["gflops"] = gflop / r["epoch_s"]
        r["pct_square_peak"] = 100 * r["gflops"] / peaks[framework]["square_2048"]
        r["pct_model_peak"] = 100 * r["gflops"] / peaks[framework]["model_mix"]
        r["vs_plain"] = plain[framework] / r["epoch_s"] if framework in plain else None
    return {
        "peak_gflops": peaks,
        "epoch_gflop": gflop,
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
    peaks = Table(
        title=f"this machine's limits, best of {TRIALS} (GFLOP/s, float32)", caption=report["machine"]
    )
    for col in ("framework", "GEMM 2048^3", "this model's GEMM mix (batch 64)"):
        peaks.add_column(col, justify="left" if col == "framework" else "right")
    for fw, p in report["peak_gflops"].items():
        peaks.add_row(fw, f"{p['square_2048']:.0f}", f"{p['model_mix']:.0f}")
    console.print(peaks)
    title = f"{report['samples']} samples/epoch, {report['epoch_gflop']:.1f} GFLOP/epoch, median of {report['epochs']} epochs"
    table = Table(title=title)
    cols = ("path", "epoch s", "samples/s", "GFLOP/s", "% GEMM peak", "% model-mix peak", "x plain loop",
            "compile s", "eval 10k s", "peak RSS MB")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in report["results"]:
        vs = f"{r['vs_plain']:.2f}" if r["vs_plain"] else "-"
        table.add_row(r["path"], f"{r['epoch_s']:.3f}", f"{r['samples_per_s']:,.0f}", f"{r['gflops']:.1f}",
                      f"{r['pct_square_peak']:.0f}%", f"{r['pct_model_peak']:.0f}%", vs, f"{r['compile_s']:.2f}",
                      f"{r['eval_s']:.4f}", f"{r['peak_rss_mb']:.0f}")  # fmt: skip
    console.print(table)
    if report["startup_s"]:
        start = Table(title="start-up: command to exit, median of 3 (s)")
        start.add_column("command")
        start.add_column("s", justify="right")
        for name, seconds in report["startup_s"].items():
            start.add_row(name, f"{seconds:.2f}")
        console.print(start)


if __name__ == "__main__":  # the workers: python -m jaxnet.bench --worker PATH ... | --limits FRAMEWORK
    import argparse

    worker = argparse.ArgumentParser()
    worker.add_argument("--worker", choices=PATHS)
    worker.add_argument("--limits", choices=("torch", "jax"))
    worker.add_argument("--epochs", type=int, default=3)
    worker.add_argument("--train-limit", type=int, default=0)
    w = worker.parse_args()
    from jaxnet import process

    process.prepare()
    result = limits(w.limits) if w.limits else run_worker(w.worker, w.epochs, w.train_limit)
    print(json.dumps(result))
