"""Recorded references, measured: bundle sizes, and a recorded check's time against a live comparison.

    PYTHONPATH=$PWD python -m parity_tests.recorded_sizes [--runs 3] [--out docs]
    # writes docs/recorded-cpu.json and docs/recorded-cpu.md

The pairs: the tutorial MLP (``torchref.NeuralNetwork`` / ``jaxnet.model.NeuralNetwork``), the
CNN of PyTorch's examples/mnist and its channels-last port (examples/e15), the transformer
block and the BatchNorm pair of ``parity_tests/port_models.py``, and a one-layer GPT
(``torchref.models.gpt`` / ``jaxnet.models.gpt``). Each is recorded with ``parity.record``
(8 examples, 2 steps of the model's own recipe) for the float32 rows and for both dtypes;
the float64 torch runs behind the floors are in both.

Timing (MLP, CNN, block; float32 rows): each run is a fresh process, as a CI job runs it
(interpreter start, imports, XLA compilation included): the live comparison (torch and JAX)
and the recorded check (JAX only; it imports no torch), ``--runs`` times each, alternating;
the medians of wall and CPU time (user + sys). The machine is shared (2 cores, other jobs
running), so the wall times carry its load; the CPU times less so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N, STEPS = 8, 2
PAIRS = ("mlp", "cnn", "block", "bn", "gpt")
TIMED = ("mlp", "cnn", "block")
GPT = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)


def images(n: int = N, crop: bool = False):
    from jaxnet import data

    train = data.load().train
    x = train[:n].float_images()
    return (x[:, :, 8:20, 8:20].copy() if crop else x), train.labels[:n]


def options(name: str) -> dict:
    from jaxnet.config import PORT_RECIPES, OptimConfig

    adamw = replace(PORT_RECIPES["adamw-warmup-cosine-clip"], warmup_steps=1)
    return {
        "mlp": {"optimizer": OptimConfig(name="sgd", lr=1e-3)},  # the tutorial's recipe
        "cnn": dict(loss="nll", optimizer=OptimConfig(name="adadelta", lr=1.0), channels_last=True,
                    flatten={"fc1": (64, 12, 12)}, relu_inputs=["conv1", "conv2", "fc1"], pool_inputs=["conv2"]),
        "block": {"optimizer": adamw},
        "bn": {"optimizer": OptimConfig(name="sgd", lr=0.1, momentum=0.9), "channels_last": True},
        "gpt": {"optimizer": adamw},
    }[name] | {"steps": STEPS}  # fmt: skip


def data(name: str):
    from parity_tests.port_models import token_batch

    if name == "block":
        return token_batch(N)
    if name == "gpt":
        (ids, mask), targets = token_batch(N)
        return (ids, ~mask), targets  # the GPT takes torch's padding mask: True at padding
    return images(crop=name == "bn")


def torch_module(name: str):
    import torch

    torch.manual_seed(0)
    if name == "mlp":
        import torchref

        return torchref.NeuralNetwork()
    if name == "cnn":
        from examples.e15_recorded_reference import Net

        return Net()
    from parity_tests import port_models

    if name == "gpt":
        from torchref.models import gpt

        return gpt.GPT(gpt.GPTConfig(**GPT))
    return {"block": port_models.TorchBlock, "bn": port_models.TorchBN}[name]()


def port(name: str):
    """The NNX port, built without importing torch."""
    from flax import nnx

    if name == "mlp":
        from jaxnet.model import NeuralNetwork

        return NeuralNetwork(rngs=nnx.Rngs(0))
    if name == "cnn":
        from examples.build import parse

        column: dict = {}
        exec(parse("e15_recorded_reference").jax_code, column)  # e15's JAX column: torch-free
        return column["FlaxNet"](nnx.Rngs(0))
    if name == "gpt":
        from jaxnet.models import gpt

        return gpt.GPT(gpt.GPTConfig(**GPT), rngs=nnx.Rngs(0))
    from parity_tests import nnx_ports

    return {"block": nnx_ports.NNXBlock, "bn": nnx_ports.NNXBN}[name](rngs=nnx.Rngs(0))


def child(mode: str, name: str, bundle: str) -> None:
    """One timed run, in this fresh process; prints a JSON line."""
    from jaxnet import process

    process.prepare(shared=True)  # as the suite and the CLI: before torch can load
    from jaxnet import parity

    start = time.perf_counter()
    if mode == "live":
        report = parity.compare(
            torch_module(name), port(name), *data(name), dtypes=("float32",), **options(name)
        )
    else:
        report = parity.compare(bundle, port(name))
    seconds = time.perf_counter() - start
    print(json.dumps({"passed": report.passed, "rows": len(report.rows), "compare s": seconds,
                      "torch imported": "torch" in sys.modules}))  # fmt: skip


def timed(mode: str, name: str, bundle: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAXNET_COMPILE_CACHE": "0"}
    done = subprocess.run([sys.executable, "-m", "parity_tests.recorded_sizes", "--child", mode, name, str(bundle)],
                          capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {name} failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return got | {"process wall s": wall, "process cpu s": cpu}


def measure(runs: int, pairs: list[str]) -> dict:
    from jaxnet import parity, process
    from jaxnet.parity.environment import machine

    process.prepare(shared=True)
    out: dict = {"machine": f"{machine()['cpu']} ({platform.machine()}), {os.cpu_count()} cores (shared)",
                 "examples": N, "steps": STEPS, "runs": runs, "pairs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in pairs:
            entry: dict = {"recipe": options(name)["optimizer"].name}
            for label, dtypes in (("float32", ("float32",)), ("both", ("float32", "float64"))):
                path = Path(tmp) / f"{name}-{label}"
                start = time.perf_counter()
                parity.record(torch_module(name), *data(name), path, dtypes=dtypes, **options(name))
                files = {f.name: f.stat().st_size for f in sorted(path.iterdir())}
                index = json.loads((path / "bundle.json").read_text())
                entry[f"bundle {label}"] = {"bytes": sum(files.values()), "files": files,
                                            "answers": len(index["answers"]),
                                            "record s": time.perf_counter() - start}  # fmt: skip
                print(name, label, entry[f"bundle {label}"], flush=True)
            entry["parameters"] = int(sum(p.numel() for p in torch_module(name).parameters()))
            if name in TIMED:
                bundle = Path(tmp) / f"{name}-float32"
                trials = {"live": [], "recorded": []}
                for _ in range(runs):
                    for mode in ("live", "recorded"):
                        trials[mode].append(timed(mode, name, bundle))
                        print(name, mode, trials[mode][-1], flush=True)
                entry["timing"] = {mode: _medians(t) for mode, t in trials.items()}
            out["pairs"][name] = entry
    return out


def _medians(trials: list[dict]) -> dict:
    keys = ("process wall s", "process cpu s", "compare s")
    return {k: statistics.median(t[k] for t in trials) for k in keys} | {
        "passed": all(t["passed"] for t in trials),
        "rows": trials[0]["rows"],
        "torch imported": trials[0]["torch imported"],
        "each": [{k: round(t[k], 2) for k in keys} for t in trials],
    }


def markdown(m: dict) -> str:
    lines = [
        "# Recorded references: bundle sizes and check times",
        "",
        f"`python -m parity_tests.recorded_sizes` on {m['machine']}: {m['examples']} examples, "
        f"{m['steps']} steps of each model's recipe; sizes with dedup of repeated arrays, on disk.",
        "",
        "| pair | parameters | recipe | bundle, float32 rows | bundle, both dtypes | answers (float32 / both) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in m["pairs"].items():
        a, b = e["bundle float32"], e["bundle both"]
        lines.append(f"| {name} | {e['parameters']:,} | {e['recipe']} | {a['bytes'] / 1e6:.2f} MB | "
                     f"{b['bytes'] / 1e6:.2f} MB | {a['answers']} / {b['answers']} |")  # fmt: skip
    lines += [
        "",
        f"Time per run, a fresh process each (imports and XLA compilation included), median of {m['runs']}; "
        "float32 rows. The machine is shared: wall times carry its load.",
        "",
        "| pair | live: wall s | live: CPU s | recorded: wall s | recorded: CPU s | rows | torch imported by the check |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in m["pairs"].items():
        if "timing" in e:
            lv, rc = e["timing"]["live"], e["timing"]["recorded"]
            lines.append(f"| {name} | {lv['process wall s']:.1f} | {lv['process cpu s']:.1f} | {rc['process wall s']:.1f} | "
                         f"{rc['process cpu s']:.1f} | {rc['rows']} | {'yes' if rc['torch imported'] else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs", help="directory of the outputs (default: docs)"
    )
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS, help="(default: all)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PAIR", "BUNDLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    m = measure(args.runs, args.pairs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recorded-cpu.json").write_text(json.dumps(m, indent=1) + "\n")
    (args.out / "recorded-cpu.md").write_text(markdown(m))
    print(markdown(m))


if __name__ == "__main__":
    main()
