"""How long ``parity.compare`` takes on the CNN, as examples/e12_port_a_cnn.py calls it.

    python docs/scripts/compare_e12.py [--runs 3] > docs/compare-e12-cpu.md

Each run is a fresh process: e12's module first (it calls ``jaxnet.process.prepare`` before
torch loads, as the example does), then its models and its 32 real images, then the timed
``compare`` call with e12's options (float32, two Adadelta steps, the flatten rule). Every run
compiles its programs cold (a Python caller has no persistent compilation cache unless it turns
one on), and, unlike e12, no float64 check runs before it: the timed call also starts JAX's
CPU backend and torch's threads. Issue 19's line is 20 s for the call.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import time
from examples.e12_port_a_cnn import FlaxNet, Net  # first: it sets the process up before torch loads
import torch
from flax import nnx
from examples._common import real_batch
from jaxnet import parity
from jaxnet.checkpoint import init_state_dict
from jaxnet.config import CNNConfig, OptimConfig

x, y = real_batch(32)
torch_net = Net()
torch_net.load_state_dict({k: torch.from_numpy(v) for k, v in init_state_dict(CNNConfig(), 0).items()})
options = dict(loss="nll", optimizer=OptimConfig(name="adadelta", lr=1.0), steps=2, dtypes=("float32",),
               channels_last=True, relu_inputs=["conv1", "conv2", "fc1"], pool_inputs=["conv2"])
port = nnx.eval_shape(lambda: FlaxNet(nnx.Rngs(0)))
start = time.perf_counter()
report = parity.compare(torch_net, port, x, y, flatten={"fc1": (64, 12, 12)}, **options)
seconds = time.perf_counter() - start
assert report.passed, report.first_failure()
print(f"{seconds:.2f} {len(report.rows)}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    env = {**os.environ, "JAXNET_COMPILE_CACHE": "0"}
    times, rows = [], 0
    for _ in range(args.runs):
        done = subprocess.run(
            [sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            sys.exit(f"a run exited {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}")
        seconds, rows = done.stdout.strip().splitlines()[-1].split()
        times.append(float(seconds))
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"`python docs/scripts/compare_e12.py --runs {args.runs}` at {commit.stdout.strip()}, {date}: "
          f"e12's `parity.compare` call (32 images, float32, 2 Adadelta steps; {rows} rows, all passed), "
          "each run a fresh process compiling cold.\n")  # fmt: skip
    print("| run | seconds |\n|---|---|")
    print("\n".join(f"| {i + 1} | {t:.2f} |" for i, t in enumerate(times)))
    print(f"\nmedian {statistics.median(times):.2f} s (issue 19's line: 20 s)")


if __name__ == "__main__":
    main()
