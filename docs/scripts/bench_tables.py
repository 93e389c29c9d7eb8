"""The README's speed tables, from the saved ``jaxnet bench --json`` outputs.

    python docs/scripts/bench_tables.py mlp-cnn  > docs/bench-mlp-cnn-cpu.md
    python docs/scripts/bench_tables.py families > docs/bench-families-cpu.md
    python docs/scripts/bench_tables.py allocator > docs/bench-allocator-cpu.md

``mlp-cnn`` reads ``docs/bench-cpu.json`` (the MLP's and the CNN's paths in one run),
``families`` reads ``docs/bench-resnet-cpu.json`` and ``docs/bench-gpt-cpu.json``,
``allocator`` ``docs/bench-{cnn,resnet}-alloc-cpu.json`` (the same paths run with glibc's
allocator at its defaults, ``JAXNET_MALLOC=0``; before jaxnet kept freed memory itself, the
other way round: told to keep it, ``MALLOC_*`` in the environment). Each model
gets its table (one row per path) and a line of ratios: every path's samples/s over its
model's plain torch loop, the same run's. The README holds each output verbatim between
``<!-- generated: docs/X -->`` markers; ``jaxnet.docs_check`` fails when the two differ or
when the file is not what this script prints from the saved runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]

TABLES = {"mlp-cnn": [("bench-cpu.json", ("mlp", "cnn"))],
          "families": [("bench-resnet-cpu.json", ("resnet",)), ("bench-gpt-cpu.json", ("gpt",))],
          "allocator": [("bench-cnn-alloc-cpu.json", ("cnn",)), ("bench-resnet-alloc-cpu.json", ("resnet",))]}  # fmt: skip
PLAIN_TORCH = {"mlp": "torch-plain"}  # else "<model>-torch-plain"


def num(x, fmt: str) -> str:
    return "-" if x is None or x != x else format(x, fmt)


def model_of(path: str, models: dict) -> str:
    prefix = path.split("-")[0]
    return prefix if prefix in models and prefix != "mlp" else "mlp"


def machine(report: dict) -> list[str]:
    fma, peaks = report["fma_peak"], report["peak_gflops"]
    gemm = ", ".join(f"{fw} {p['square_2048']:.0f}" for fw, p in peaks.items() if "square_2048" in p)
    line = (f"Machine: {report['machine']}. The cores' float32 FMA peak (derived): {fma['derivation']}; "
            f"a 2048^3 GEMM, GFLOP/s: {gemm}.")  # fmt: skip
    if report.get("allocator"):  # each worker's setting, recorded since jaxnet sets one
        line += f" glibc's allocator: {', '.join(report['allocator'])}."
    elif "allocator_env" in report:  # recorded since the allocator finding (docs/xla-cpu-conv.md)
        env = " ".join(f"{k}={v}" for k, v in report["allocator_env"].items())
        line += f" glibc's allocator: {f'`{env}`' if env else 'its defaults'}."
    if "xla_flags" in report:  # recorded since jaxnet moved XLA's convolutions off YNNPACK
        flags = report["xla_flags"]
        line += f" The JAX workers' XLA_FLAGS: {f'`{flags}`' if flags else 'none'}."
    return [line, ""]


def model(report: dict, name: str) -> list[str]:
    m, floor = report["models"][name], report["floors"].get(name)
    rows = [r for r in report["results"] if model_of(r["path"], report["models"]) == name]
    head = (f"**{name}**: batch {m['batch']}, {m['samples']} samples an epoch, "
            f"{1e3 * m['gflop_per_sample']:.1f} MFLOP per sample; median of {report['epochs']} epochs")  # fmt: skip
    if floor:
        head += f"; the step's floor {1e3 * floor['step_s']:.1f} ms ({floor['step_gflop'] / floor['step_s']:.0f} GFLOP/s)"
    tokens = any(r.get("tokens_per_s") for r in rows)
    evals = any(r.get("eval_s") == r.get("eval_s") and r.get("eval_s") is not None for r in rows)  # NaN: none
    out = [head, "", "| path | epoch s | samples/s |" + (" tokens/s |" if tokens else "")
           + " GFLOP/s | % floor | % FMA peak | x plain loop | compile s |" + (" eval 10k s |" if evals else "")
           + " peak RSS MB |", "|---|---|---|" + ("---|" if tokens else "") + "---|---|---|---|---|---|"
           + ("---|" if evals else "")]  # fmt: skip
    for r in rows:
        if "error" in r:
            out.append(f"| {r['path']} | error: {r['error']} |")
            continue
        out.append(
            f"| {r['path']} | {r['epoch_s']:.2f} | {r['samples_per_s']:,.0f} |"
            + (f" {num(r.get('tokens_per_s'), ',.0f')} |" if tokens else "")
            + f" {r['gflops']:.1f} | {num(r['pct_floor'], '.1f')} | {num(r['pct_fma_peak'], '.1f')} "
            f"| {num(r['vs_plain'], '.2f')} | {num(r['compile_s'], '.2f')} |"
            + (f" {num(r.get('eval_s'), '.2f')} |" if evals else "")
            + f" {r['peak_rss_mb']:.0f} |"
        )
    base = {r["path"]: r for r in rows}.get(PLAIN_TORCH.get(name, f"{name}-torch-plain"), {})
    if "samples_per_s" in base:
        ratios = ", ".join(f"{r['path']} {r['samples_per_s'] / base['samples_per_s']:.2f}"
                           for r in rows if "samples_per_s" in r and r is not base)  # fmt: skip
        out += ["", f"samples/s over {base['path']}'s: {ratios}"]
    return out


def startup(report: dict) -> list[str]:
    """Whole commands, start to exit, against the bare JAX import (median of 3, warm caches)."""
    times = report.get("startup_s") or {}
    bare = times.get("import jax, flax.nnx, optax")
    if not bare:
        return []
    out = ["", "Start-up, command to exit (median of 3, warm caches):", "",
           "| command | s | x `import jax, flax.nnx, optax` |", "|---|---|---|"]  # fmt: skip
    out += [f"| {name} | {s:.2f} | {s / bare:.2f} |" for name, s in times.items()]
    return out


def tables(name: str) -> list[str]:
    out: list[str] = []
    for file, models in TABLES[name]:
        report = json.loads((DOCS / file).read_text())
        out += machine(report) if not out else []
        for model_name in models:
            out += [*([""] if out and out[-1] else []), *model(report, model_name)]
        out += startup(report)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in TABLES:
        sys.exit(f"usage: bench_tables.py {{{','.join(TABLES)}}}")
    print("\n".join(tables(sys.argv[1])))
