"""The README's bench table of the port families, from the saved ``jaxnet bench --json`` outputs.

    python docs/scripts/bench_tables.py > docs/bench-families-cpu.md

Reads ``docs/bench-resnet-cpu.json`` and ``docs/bench-gpt-cpu.json`` (``jaxnet bench --model
resnet|gpt --no-startup --json ...``). The README holds this output verbatim between
``<!-- generated: docs/bench-families-cpu.md -->`` markers; ``jaxnet.docs_check`` fails when
the two differ.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]


def num(x, fmt: str) -> str:
    return "-" if x is None or x != x else format(x, fmt)


def family(name: str) -> list[str]:
    report = json.loads((DOCS / f"bench-{name}-cpu.json").read_text())
    model, floor = report["models"][name], report["floors"].get(name)
    rows = {r["path"]: r for r in report["results"]}
    head = (f"**{name}**: batch {model['batch']}, {model['samples']} samples an epoch, "
            f"{1e3 * model['gflop_per_sample']:.0f} MFLOP per sample; median of {report['epochs']} epochs")  # fmt: skip
    if floor:
        head += f"; the step's floor {1e3 * floor['step_s']:.0f} ms ({floor['step_gflop'] / floor['step_s']:.0f} GFLOP/s)"
    out = [head, "", "| path | samples/s | tokens/s | GFLOP/s | % floor | x plain loop | peak RSS MB |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for path, r in rows.items():
        if "error" in r:
            out.append(f"| {path} | error: {r['error']} | | | | | |")
            continue
        out.append(
            f"| {path} | {r['samples_per_s']:.1f} | {num(r['tokens_per_s'], ',.0f')} | {r['gflops']:.1f} "
            f"| {num(r['pct_floor'], '.1f')} | {num(r['vs_plain'], '.2f')} | {r['peak_rss_mb']:.0f} |"
        )
    ratios = []
    for kind in ("plain", "jaxnet"):
        t, j = rows.get(f"{name}-torch-{kind}", {}), rows.get(f"{name}-jax-{kind}", {})
        if "samples_per_s" in t and "samples_per_s" in j:
            ratios.append(f"{kind} {j['samples_per_s'] / t['samples_per_s']:.2f}")
    return [*out, "", f"jax / torch samples/s: {', '.join(ratios) or '-'}"]


if __name__ == "__main__":
    lines = [*family("resnet"), "", *family("gpt")]
    print("\n".join(lines))
