"""Where the suite's JAX time goes: tracing, lowering and compiling, per program and per file.

    python docs/scripts/suite_compiles.py > docs/suite-compiles-cpu.md

Runs what ``make test`` runs for pytest (``-n 2 --dist loadfile``, from the repository root)
with this file loaded as a plugin in every xdist worker (``-p suite_compiles``, the folder on
``PYTHONPATH``): JAX reports each program's tracing, lowering to MLIR and XLA compile times
(``jax.monitoring``), which the plugin sums per program name and per test file. Counts only
the workers' own processes: subprocesses (the CLI's, the data-parallel workers') are not seen.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EVENTS = {
    "jaxpr_trace_duration": "tracing",
    "jaxpr_to_mlir_module_duration": "lowering",
    "backend_compile_duration": "XLA compile",
}

# ---------------------------------------------------------------- the plugin (in each worker)
_SEEN: collections.Counter = collections.Counter()
_COUNT: collections.Counter = collections.Counter()
_TEST = ["(collection)"]


def pytest_configure(config) -> None:
    import jax.monitoring

    def listen(event: str, seconds: float, **kwargs) -> None:
        kind = EVENTS.get(event.rsplit("/", 1)[-1])
        if kind:
            name = str(kwargs.get("fun_name", "?")).removeprefix("jit(").removesuffix(")")
            for key in ((kind, "program", name), (kind, "file", _TEST[0].split("::")[0])):
                _SEEN[key] += seconds
                _COUNT[key] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)


def pytest_runtest_logstart(nodeid, location) -> None:
    _TEST[0] = nodeid


def pytest_unconfigure(config) -> None:
    out = os.environ.get("SUITE_COMPILES_OUT")
    if out and _SEEN:
        rows = [[*k, v, _COUNT[k]] for k, v in _SEEN.items()]
        Path(out, f"{os.getpid()}.json").write_text(json.dumps(rows))


# ---------------------------------------------------------------- the run and its tables
def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "SUITE_COMPILES_OUT": out,
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        cmd = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-q", "-p", "no:cacheprovider",
               "-p", "suite_compiles"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        if done.returncode:  # the figures still print; what failed goes to stderr
            print(
                *(line for line in done.stdout.splitlines() if line.startswith("FAILED")),
                sep="\n",
                file=sys.stderr,
            )
        seconds: collections.Counter = collections.Counter()
        counts: collections.Counter = collections.Counter()
        for path in Path(out).glob("*.json"):
            for kind, by, name, s, n in json.loads(path.read_text()):
                seconds[kind, by, name] += s
                counts[kind, by, name] += n
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(f"`python docs/scripts/suite_compiles.py` at {commit.stdout.strip()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {done.stdout.strip().splitlines()[-1]} "
          f"({wall:.0f} s of wall time with the plugin; all of pytest's processes, subprocesses included: "
          f"{cpu:.0f} CPU-s).\n")  # fmt: skip
    totals = {
        k: sum(v for (kind, by, _), v in seconds.items() if kind == k and by == "file")
        for k in EVENTS.values()
    }
    print("| in the two xdist workers | seconds | programs |")
    print("|---|---|---|")
    for kind, total in totals.items():
        n = sum(c for (k, by, _), c in counts.items() if k == kind and by == "file")
        print(f"| {kind} | {total:.1f} | {n} |")
    print(f"| all three | {sum(totals.values()):.1f} | |\n")
    for by, top in (("program", 15), ("file", 15)):
        names = collections.Counter()
        for (_kind, b, name), v in seconds.items():
            if b == by:
                names[name] += v
        print(f"| {by} (the {top} with the most) | tracing + lowering + compile, s | compiles |")
        print("|---|---|---|")
        for name, v in names.most_common(top):
            print(f"| `{name}` | {v:.1f} | {counts['XLA compile', by, name]} |")
        print()


if __name__ == "__main__":
    main()
