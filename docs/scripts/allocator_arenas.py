"""glibc keeping freed memory, with one arena or glibc's many: torch's and JAX's epochs.

    python docs/scripts/allocator_arenas.py > docs/allocator-arenas-cpu.md

jaxnet's setting (``jaxnet.process.MALLOC``) includes one arena (``M_ARENA_MAX=1``), which
every thread of both frameworks then shares. Here the same setting through glibc's own
variables, with and without ``MALLOC_ARENA_MAX=1`` (a ``MALLOC_*`` variable makes jaxnet leave
the allocator alone), for the CNN's and the ResNet's plain torch loop and jaxnet's JAX path
(``jaxnet bench``'s epoch functions): each measurement in a fresh process (glibc reads the
variables at start), the two settings alternated, three rounds, each the median of three
epochs after a warm-up one.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from jaxnet.process import M_MMAP_MAX, M_TOP_PAD, M_TRIM_THRESHOLD, MALLOC

# jaxnet's own values, as glibc's variables
KEPT = {name: str(MALLOC[param]) for name, param in
        [("MALLOC_MMAP_MAX_", M_MMAP_MAX), ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD), ("MALLOC_TOP_PAD_", M_TOP_PAD)]}  # fmt: skip
SETTINGS = {"one arena": KEPT | {"MALLOC_ARENA_MAX": "1"}, "glibc's arenas": KEPT}
PATHS = {"cnn-torch-plain": 1280, "cnn-jax-jaxnet": 1280, "resnet-torch-plain": 384, "resnet-jax-jaxnet": 384}
ONE = """
import statistics, sys
from jaxnet import process
process.prepare()
from jaxnet.bench.limits import call_times
from jaxnet.bench.workers import _epoch_fn
run, _ = _epoch_fn(sys.argv[1], int(sys.argv[2]))
print(statistics.median(call_times(run, 3)))
"""


def main() -> None:
    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):
        for path, images in PATHS.items():
            for name, env in SETTINGS.items():
                out = subprocess.run([sys.executable, "-c", ONE, path, str(images)], env=os.environ | env,
                                     capture_output=True, text=True, check=True)  # fmt: skip
                seconds.setdefault((path, name), []).append(float(out.stdout.split()[-1]))
    print("| path | images an epoch | " + " | ".join(f"{n}: epoch s (three rounds)" for n in SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    for path, images in PATHS.items():
        cells = []
        for name in SETTINGS:
            t = seconds[path, name]
            cells.append(f"{statistics.median(t):.3f} ({', '.join(f'{x:.3f}' for x in t)})")
        print(f"| {path} | {images} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
