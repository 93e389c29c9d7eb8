"""Where `jaxnet parity`'s time goes: profile the default report, and print the table docs/ keeps.

    python docs/scripts/parity_profile.py run --label "after" [--root CHECKOUT]  # appends a run
    python docs/scripts/parity_profile.py table > docs/parity-profile-cpu.md

``run`` runs ``python -m cProfile -m jaxnet parity --workers 1`` (the defaults, in one process:
the MLP, both dtypes, every section) in ``--root`` (default: this checkout; another one
profiles an older commit with the same accounting), and saves to docs/parity-profile-cpu.json the report's own seconds, the
process's wall and CPU time, and the cumulative seconds of the parts below (cProfile's clock is
wall time, and it adds its own overhead to every Python call: compare runs with each other, not
with an unprofiled report). ``table`` prints the saved runs side by side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "docs" / "parity-profile-cpu.json"

# part -> (file suffix or "~" for a builtin, function name) whose cumulative times are summed;
# the parts overlap (a section holds the computations below it), as the table says.
PARTS: dict[str, list[tuple[str, str]]] = {
    "the report (after imports and data)": [("jaxnet/parity/builtin.py", "run")],
    "teacher-forced steps, every recipe": [("jaxnet/parity/forced.py", "teacher_forced")],
    "the free-running epoch (its sample steps too)": [("jaxnet/parity/sections.py", "epoch_section"),
        ("jaxnet/parity/epoch.py", "sample"), ("jaxnet/parity/epoch.py", "run_dtype")],  # before, after 2026-12-01
    "torch: forward matmuls (linear)": [("~", "<built-in method torch._C._nn.linear>")],
    "torch: backward": [("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>")],
    "torch: optimizer steps": [("torch/optim/optimizer.py", "wrapper")],
    "jax: waiting for results (its programs run)": [("jaxnet/backends/jax.py", "_host"), ("jaxnet/model.py", "host")],  # before, after 2026-12-01
    "step floors": [("jaxnet/parity/verdict.py", "step_floor_terms"), ("jaxnet/parity/verdict.py", "step_floor_of")],
    "comparisons (worst ratio, normwise gaps)": [("jaxnet/parity/verdict.py", "worst_ratio"), ("jaxnet/numerics.py", "rel_error")],
    "a step's floors and worst ratios in one pass (step_ratios, from e1728d5)": [("jaxnet/parity/verdict.py", "step_ratios")],
    "layout: jax <-> torch names and axes": [("jaxnet/model.py", "to_torch_layout"), ("jaxnet/model.py", "from_torch_layout")],
    "numpy -> torch copies (torch.tensor)": [("~", "<built-in method torch.tensor>"),
        ("jaxnet/backends/torch.py", "copy_into")],
    "validating loaded states": [("jaxnet/checkpoint.py", "validate_state_dict")],
}  # fmt: skip


def _parts(stats: pstats.Stats) -> dict[str, float]:
    out = {}
    for part, names in PARTS.items():
        total = 0.0
        for (path, _, func), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
            if any(func == f and (path == p if p == "~" else path.endswith(p)) for p, f in names):
                total += cumulative
        out[part] = round(total, 1)
    return out


def run(label: str, root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        prof, report = Path(tmp) / "parity.prof", Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(prof),
            "-m",
            "jaxnet",
            "parity",
            "--json",
            str(report),
        ]
        if (root / "jaxnet" / "parity" / "pool.py").exists():  # one process: cProfile sees only its own
            cmd += ["--workers", "1"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit(f"jaxnet parity exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        saved = json.loads(report.read_text())
        parts = _parts(pstats.Stats(str(prof)))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    rows = saved["rows"]
    return {
        "label": label,
        "commit": commit.stdout.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": f"{sum(r['passed'] for r in rows)}/{len(rows)}",
        "report_s": round(saved["seconds"], 1),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "parts_s": parts,
    }


def table(runs: list[dict]) -> str:
    head = (
        "| part, cumulative s under cProfile | "
        + " | ".join(f"{r['label']} ({r['commit']})" for r in runs)
        + " |"
    )
    lines = [head, "|---" * (len(runs) + 1) + "|"]
    for key, name in [
        ("rows", "rows within their bounds"),
        ("wall_s", "process wall s"),
        ("cpu_s", "process CPU s"),
    ]:
        lines.append(f"| {name} | " + " | ".join(str(r[key]) for r in runs) + " |")
    for part in PARTS:
        cells = (
            f"{r['parts_s'][part]:.1f}" if part in r["parts_s"] else "-" for r in runs
        )  # "-": not counted then
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--label", required=True)
    go.add_argument("--root", type=Path, default=ROOT)
    sub.add_parser("table")
    args = parser.parse_args()
    runs = json.loads(SAVED.read_text()) if SAVED.exists() else []
    if args.command == "run":
        runs.append(run(args.label, args.root.resolve()))
        SAVED.write_text(json.dumps(runs, indent=1) + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
