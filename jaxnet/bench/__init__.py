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
- ``cnn-jax-fastconv``: the same JAX path, its ``nnx.Conv`` layers on :mod:`jaxnet.fastconv`'s
  measured policy (the stem, conv1, as im2col + one GEMM with its own gradient; conv2 on XLA's
  convolution) and its 2x2 max-pool on :mod:`jaxnet.fastpool` (torch's tie rule, no ``select_and_scatter``);
- ``cnn-jax-ynn``: ``cnn-jax-jaxnet`` on XLA's own default, its convolutions on YNNPACK, which
  every jaxnet process turns off (``jaxnet.process.XLA_CONV_FLAG``; docs/xla-cpu-conv.md).

``--model resnet`` and ``--model gpt`` time the port families with their ``jaxnet train``
recipes and batch sizes (:mod:`jaxnet.bench.port_loops`), on a few steps an epoch by default
(:data:`DEFAULT_LIMIT`: 384 images, 192 windows of 128 characters):

- ``resnet-torch-plain``, ``gpt-torch-plain``: a torch user's loop (torchref's model, the
  optimizer with its parameter groups, the LR scheduler, ``zero_grad/backward/step``);
- ``resnet-jax-plain``, ``gpt-jax-plain``: an NNX user's loop (jaxnet's NNX model,
  ``nnx.Optimizer`` over an optax chain, one ``nnx.jit`` step per batch);
- ``resnet-torch-jaxnet``, ``resnet-jax-jaxnet`` (and the GPT's): the port engine's backends,
  as ``jaxnet train --model resnet`` runs them;
- ``resnet-jax-fastconv``: the same JAX backend, its ``nnx.Conv`` layers on
  :mod:`jaxnet.fastconv`'s measured policy: the stem, the 3x3 stride-2 and 1x1 stride-2 layers
  as im2col + one GEMM with their own gradient, the 3x3 stride-1 ones on XLA's convolution;
- ``resnet-jax-ynn``: ``resnet-jax-jaxnet`` on XLA's default YNNPACK convolutions.

The allocator matters to the JAX paths: glibc's defaults hand XLA's large buffers back to the
kernel and fault them in again every step (165,000-890,000 minor page faults an epoch here).
Every worker keeps freed memory instead (:func:`jaxnet.process.keep_freed_memory`, as every
jaxnet process does); the environment travels to every worker, so ``JAXNET_MALLOC=0 jaxnet
bench ...`` times them on glibc's defaults (docs/xla-cpu-conv.md). Each row records its
worker's setting.

Every path trains on the same batches (the ResNet's crop-and-flip from :mod:`jaxnet.augment`
in the plain loops too; the GPT's windows at the same offsets); a family on the port engine
without plain loops of its own gets jaxnet's two paths.

Epoch times are medians of ``--epochs`` timed epochs after a warm-up one (its extra time is
reported as compile), taken in rounds: every path's worker is alive at once and the paths
take their timed epochs in turn (:func:`run_paths`), so that a shared machine's drift reaches
every path alike. The limits are the machine's, the same for every path
(:mod:`jaxnet.bench.limits`): every GEMM and convolution of one training step timed in torch
and in XLA (best of several trials; a convolution also as its im2col GEMMs), the fastest of
any framework per kernel summed into the step's floor; and the cores' float32 FMA peak,
derived from /proc/cpuinfo with its derivation printed. A family declares its step's products
(``config.products(batch)``, :mod:`jaxnet.flops`: GEMMs, attention's per-head batched GEMMs,
convolutions of any stride and padding); its FLOP count is theirs. Every path's row gives its
share of its model's floor and of the FMA peak; a 2048^3 GEMM per framework is shown beside.
Start-up is the wall time of whole commands (``jaxnet eval``, ``jaxnet predict``) against a
bare ``import jax, flax.nnx, optax``. A worker that fails is a row with its error; the
others still run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

from jaxnet import flops, process
from jaxnet.config import ModelConfig

PATHS = ("torch-tutorial", "torch-plain", "torch-jaxnet", "jax-plain", "jax-jaxnet-step", "jax-jaxnet-scan")
# A *-jax-ynn path (XLA's default YNNPACK convolutions beside jaxnet's Eigen ones) only where
# jaxnet changes that default: the jaxlib 0.10 line (jaxnet.process.xla_flags).
WITH_YNN = bool(process.xla_flags(""))
CNN_PATHS = ("cnn-torch-plain", "cnn-torch-jaxnet", "cnn-jax-jaxnet", "cnn-jax-fastconv") + (
    ("cnn-jax-ynn",) if WITH_YNN else ()
)
PLAIN_PORTS = ("resnet", "gpt")  # the port families with plain loops of their own (bench.port_loops)
FASTCONV_PORTS = ("resnet",)  # the port families with convolutions: jax-fastconv and jax-ynn paths too
# XLA's own default for a ``*-jax-ynn`` worker: convolutions on YNNPACK, which jaxnet's
# process.prepare turns off (an explicit choice of YNN fusion types is the user's, kept).
YNN_DEFAULT = f"{process.YNN_FUSION}=+individual_convolution"


def port_paths(name: str) -> tuple[str, ...]:
    """A port-engine family's paths: the plain loops where the bench has them, jaxnet's two, and
    jaxnet's JAX path on :mod:`jaxnet.fastconv` and on XLA's default (YNNPACK) convolutions where
    the family has convolutions."""
    plain = name in PLAIN_PORTS
    paths = tuple(f"{name}-{fw}-{kind}" for fw in ("torch", "jax") for kind in ("plain", "jaxnet")
                  if plain or kind == "jaxnet")  # fmt: skip
    if name not in FASTCONV_PORTS:
        return paths
    return paths + (f"{name}-jax-fastconv",) + ((f"{name}-jax-ynn",) if WITH_YNN else ())


def _model_paths() -> dict[str, tuple[str, ...]]:
    from jaxnet import registry

    ports = {n: port_paths(n) for n, f in registry.FAMILIES.items() if f.engine == "port"}
    return {"mlp": PATHS, "cnn": CNN_PATHS} | ports


MODEL_PATHS = _model_paths()
ALL_PATHS = tuple(p for paths in MODEL_PATHS.values() for p in paths)
# Samples per epoch where --train-limit is not given: the port families' steps take seconds
# on a CPU (15 GFLOP a ResNet step of 128 images, 46 GFLOP a GPT step of 64 windows), so
# three steps an epoch; 0 is the whole training set.
DEFAULT_LIMIT = {"resnet": 384, "gpt": 192}
BATCH = 64
TRIALS = 7


def model_name(path: str) -> str:
    """The family a path trains: its first word where that names one (the MLP's paths have none)."""
    first = path.split("-")[0]
    return first if first in MODEL_PATHS and first != "mlp" else "mlp"


def is_cnn(path: str) -> bool:
    return model_name(path) == "cnn"


def model_of(path: str):
    from jaxnet import registry

    return registry.family(model_name(path)).config()


def batch_of(name: str) -> int:
    """The family's training batch size (``jaxnet train``'s default for it)."""
    from jaxnet import registry

    return int(registry.family(name).flags.get("batch_size", BATCH))


def train_limit_of(name: str, train_limit: int | None) -> int:
    """Samples per epoch: ``--train-limit``, else the family's bench default (0: all)."""
    return DEFAULT_LIMIT.get(name, 0) if train_limit is None else train_limit


def framework_of(path: str) -> str:
    name = model_name(path)
    return (path.removeprefix(f"{name}-") if name != "mlp" else path).split("-")[0]


def epoch_gflop(config, n: int, batch: int = BATCH) -> float:
    """GFLOP of an epoch of ``n`` samples: the products of a step of ``batch`` (the family's
    ``config.products``: forward, weight gradients, input gradients, 2 flops per MAC), per sample."""
    return n * flops.step_flop(config.products(batch)) // batch / 1e9


# ---------------------------------------------------------------------------- the run and its table


def _worker_env(path: str = "") -> dict[str, str]:
    """A worker's environment: this one's, unbuffered, no up-front claim of an accelerator's
    memory (every worker is alive at once: :func:`run_paths`), and for a ``*-jax-ynn`` path
    :data:`YNN_DEFAULT` in place of any YNN choice in ``XLA_FLAGS`` (jaxnet's own included)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **process.no_preallocation()}
    if path.endswith("-jax-ynn"):
        kept = [f for f in env.get("XLA_FLAGS", "").split() if process.YNN_FUSION not in f]
        env["XLA_FLAGS"] = " ".join([*kept, YNN_DEFAULT])
    return env


def _spawn(*args: str) -> dict:
    cmd = [sys.executable, "-m", "jaxnet.bench.workers", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
    if out.returncode != 0:
        return {"error": _failure(" ".join(args), out.stderr, out.returncode)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _failure(what: str, stderr: str, code: int | None) -> str:
    lines = stderr.strip().splitlines() or [f"exit status {code}"]
    return f"bench worker {what} failed: {lines[-1][:300]}"


# How long run_paths waits for one reply (a warm-up with its compiles, or one epoch) before it
# takes the worker for hung: far beyond the slowest measured here (the full ResNet's warm-up on
# this 2-core machine, about 3 minutes), only so that a deadlock ends the run instead of holding it.
REPLY_TIMEOUT_S = 3600.0


def run_paths(
    paths: tuple[str, ...],
    epochs: int,
    limits: dict[str, int],
    test_limit: int = 0,
    reply_timeout: float = REPLY_TIMEOUT_S,
) -> list[dict]:
    """Time each path in its own worker process (:func:`jaxnet.bench.workers.serve`), all of
    them alive at once, their epochs interleaved.

    Each worker builds its model and runs its warm-up epoch alone, one after another; then
    ``epochs`` rounds of one timed epoch per path in turn, while the others wait on a read
    (no CPU). A shared machine's drift over the run (neighbours come and go within minutes)
    then reaches every path alike: paths timed one after another would each meet a different
    machine, and their ratios would carry it. The cost is memory: every worker holds its peak
    until the end (the MLP's and the CNN's 11 paths about 11 GB here). A worker that fails is a
    row with its error, as is one that gives no reply in ``reply_timeout`` seconds (stopped); the
    others go on. Returns the rows in ``paths``' order (each path once)."""
    paths = tuple(dict.fromkeys(paths))
    rows: dict[str, dict] = {}
    live: dict[str, tuple[subprocess.Popen, object]] = {}

    def ask(path: str, command: str | None) -> dict | None:
        proc, err = live[path]
        late = ""
        try:
            if command is not None:
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
            # one line per command: nothing is left in the pipe's buffer between replies
            if select.select([proc.stdout], [], [], reply_timeout)[0]:
                line = proc.stdout.readline()  # the worker's replies alone (workers.serve's descriptor)
                if line:
                    return json.loads(line)
            else:
                late = f"bench worker --serve {path} gave no reply in {reply_timeout:g} s: stopped"
        except (BrokenPipeError, json.JSONDecodeError):
            pass
        proc.kill()
        code = proc.wait()
        err.seek(0)
        rows[path] = {"path": path, "error": late or _failure(f"--serve {path}", err.read(), code)}
        del live[path]
        return None

    with contextlib.ExitStack() as files:
        try:
            for path in paths:
                args = ["--serve", path, "--train-limit", str(limits[path]), "--test-limit", str(test_limit)]
                err = files.enter_context(tempfile.TemporaryFile("w+"))
                proc = subprocess.Popen([sys.executable, "-m", "jaxnet.bench.workers", *args], stderr=err,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=_worker_env(path))  # fmt: skip
                live[path] = (proc, err)
                ask(path, None)  # ready: built and warmed up
            for _ in range(epochs):
                for path in list(live):
                    ask(path, "epoch")
            for path in list(live):
                result = ask(path, "finish")
                if result is not None:
                    rows[path] = result
                    live.pop(path)[0].wait()
        finally:  # an interrupt or an error here: no worker left behind
            for proc, _ in live.values():
                proc.kill()
                proc.wait()
    return [rows[p] for p in paths]


def _walls(cmds: dict[str, list[str]], repeats: int = 3) -> dict[str, float]:
    """Median wall time of each whole command, start to exit, the commands taken in turn
    ``repeats`` times (as the paths' epochs are: :func:`run_paths`)."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


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
        return _walls({
            "import jax, flax.nnx, optax": [sys.executable, "-c", "import jax, flax.nnx, optax"],
            "import torch": [sys.executable, "-c", "import torch"],
            "jaxnet eval": [*jaxnet, "eval", "--checkpoint", ckpt],
            "jaxnet predict": [*jaxnet, "predict", "--checkpoint", ckpt],
            "jaxnet train (64 images)": [*jaxnet, "train", "--epochs", "1", "--train-limit", "64"],
        })  # fmt: skip


def run_bench(
    paths: tuple[str, ...], epochs: int, train_limit: int | None, with_startup: bool = True, devices: int = 1
) -> dict:
    """Time ``paths`` (each in its own worker) beside the limits of their models' steps.

    ``train_limit``: samples per epoch (images; the GPT's: windows of ``block_size``
    characters), None for each family's default (:data:`DEFAULT_LIMIT`, else all)."""
    models = tuple(dict.fromkeys(model_name(p) for p in paths))
    peaks = {fw: _spawn("--limits", fw, "--models", *models) for fw in ("torch", "jax")}
    results = run_paths(paths, epochs, {p: train_limit_of(model_name(p), train_limit) for p in paths})
    if devices > 1:
        limit = train_limit or 0
        results += [
            data_parallel(backend, n, epochs, limit) for backend in ("torch", "jax") for n in (1, devices)
        ]
    n = train_limit_of("mlp", train_limit) or 60000
    return summarise(peaks, results, epochs, n, startup() if with_startup else {})


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
    """Derived columns: throughput (samples/s; tokens/s for a text model), GFLOP/s, the share of
    the model's floor (the fastest kernel of any framework per GEMM and convolution of a step,
    times the steps of an epoch) and of the cores' FMA peak, x its plain loop (of the same
    model and framework). ``n``: samples per epoch of a result that does not say its own.
    Failed workers (an ``error`` key) stay as rows without numbers."""
    from jaxnet import registry
    from jaxnet.bench import limits

    ok = [r for r in results if "error" not in r]
    models = {name: {} for name in ("mlp", "cnn")}
    for r in ok:
        models.setdefault(model_name(r["path"]), {}).setdefault("samples", r.get("samples", n))
    for name, m in models.items():
        config, batch = registry.family(name).config(), batch_of(name)
        m |= {"batch": batch, "gflop_per_sample": epoch_gflop(config, 1, batch)}
        m["samples"] = m.get("samples", n)
        m["epoch_gflop"] = epoch_gflop(config, m["samples"], batch)
        m["steps"] = -(-m["samples"] // batch)
        m["tokens_per_sample"] = getattr(config, "block_size", None)
    kernels = {fw: p["kernels"] for fw, p in peaks.items() if "kernels" in p}
    floors = {}
    for name, m in models.items():
        config = registry.family(name).config()
        wanted = limits.step_kernels(config, m["batch"])
        if kernels and all(k.name in t for k in wanted for t in kernels.values()):
            floors[name] = limits.floors(kernels, config, m["batch"]) | {"epoch_s": None}
            floors[name]["epoch_s"] = floors[name]["step_s"] * m["steps"]
    fma_text, fma = limits.fma_peak()
    plain = {
        (model_name(r["path"]), framework_of(r["path"])): r["epoch_s"]
        for r in ok
        if r["path"].endswith("-plain")
    }
    one = {r["path"].split("-")[0]: r["epoch_s"] for r in ok if r["path"].endswith(("-ddp-1", "-mesh-1"))}
    for r in ok:
        framework, name = framework_of(r["path"]), model_name(r["path"])
        m, floor = models[name], floors.get(name)
        samples = r.get("samples", n)
        r["samples_per_s"] = samples / r["epoch_s"]
        tokens = m["tokens_per_sample"]
        r["tokens_per_s"] = None if tokens is None else tokens * r["samples_per_s"]
        r["gflops"] = m["gflop_per_sample"] * samples / r["epoch_s"]
        r["pct_floor"] = None if floor is None else 100 * floor["epoch_s"] / r["epoch_s"]
        r["pct_fma_peak"] = 100 * r["gflops"] / fma if fma == fma else None
        key = (name, framework)
        r["vs_plain"] = plain[key] / r["epoch_s"] if key in plain else None
        if r["path"].endswith(("-ddp-1", "-mesh-1")) or not r["path"][-1].isdigit():
            r["vs_one_device"] = None
        else:
            r["vs_one_device"] = one[framework] / r["epoch_s"]
    return {
        "peak_gflops": peaks,
        "floors": floors,
        "fma_peak": {"gflops": fma, "derivation": fma_text},
        "epoch_gflop": models["mlp"]["epoch_gflop"],
        "cnn_epoch_gflop": models["cnn"]["epoch_gflop"],
        "models": models,
        "samples": n,
        "epochs": epochs,
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "allocator_env": process.malloc_env(),
        # what the workers ran with (process.prepare's setting, or the environment's)
        "allocator": sorted({r["allocator"] for r in ok if "allocator" in r}),
        # what every JAX worker ran with (process.prepare adds jaxnet's; the -ynn paths add theirs)
        "xla_flags": process.xla_flags(os.environ.get("XLA_FLAGS", "")),
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
                        f"best of {TRIALS} (ms, batch {floor.get('batch', BATCH)})")  # fmt: skip
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
    models = report.get("models", {})
    per_sample = ", ".join(f"{name} {1e3 * m['gflop_per_sample']:.1f}" for name, m in models.items())
    title = (f"median of {report['epochs']} epochs after a warm-up one; MFLOP per sample: {per_sample} "
             "(tokens/s: samples/s x block_size)")  # fmt: skip
    table = Table(title=title)
    cols = ("path", "device", "samples/epoch", "epoch s", "samples/s", "tokens/s", "GFLOP/s", "% floor",
            "% FMA peak", "x plain loop", "x one device", "compile s", "eval 10k s", "peak RSS MB")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("path", "device") else "right")
    for r in report["results"]:
        if "error" in r:
            table.add_row(r["path"], "error", r["error"], style="bold red")
            continue
        samples = r.get("samples", report["samples"])
        table.add_row(r["path"], r.get("device", "-"), f"{samples:,}", f"{r['epoch_s']:.3f}",
                      f"{r['samples_per_s']:,.0f}", num(r.get("tokens_per_s"), ",.0f"), f"{r['gflops']:.1f}",
                      num(r["pct_floor"], ".0f"), num(r["pct_fma_peak"], ".0f"), num(r["vs_plain"], ".2f"),
                      num(r.get("vs_one_device"), ".2f"), f"{r['compile_s']:.2f}", num(r["eval_s"], ".4f"),
                      num(r["peak_rss_mb"], ".0f"))  # fmt: skip
    console.print(table)
    if report["startup_s"]:
        start = Table(title="start-up: command to exit, median of 3 (s)")
        start.add_column("command")
        start.add_column("s", justify="right")
        for name, seconds in report["startup_s"].items():
            start.add_row(name, f"{seconds:.2f}")
        console.print(start)
