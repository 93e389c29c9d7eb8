"""Check the figures the README quotes against the saved outputs they come from (docs/*).

    python -m jaxnet.docs_check          # prints each disagreement; exit status 1 if any

Each check reads one kind of claim out of README.md and the file that measured it, so a figure
edited by hand, or a report re-run without its paragraph, fails the suite
(``parity_tests/test_claims.py``):

- the ReLU-tie pre-activations and the free-running gaps of the parity reports (the trajectory
  notes of ``docs/parity-cpu.json``, ``parity-cnn-cpu.json``, ``parity-resnet-cpu.json``,
  ``parity-gpt-cpu.json``), and its ``N/N rows`` and seconds (every
  report: the MLP's, the CNN's, the ResNet's and the GPT's, each sentence naming its file);
- K (``jaxnet.parity.verdict.K``), and the K paragraph's summary of ``docs/calibration.md``
  (largest err / floor once-computed and of each dtype's trajectories, the faults' smallest
  margin);
- the planted-fault table: one row per fault of ``jaxnet.parity.faults``, each row's figures
  those of ``docs/calibration.md`` or, for a fault added after it,
  ``docs/faults-after-calibration-cpu.json``;
- the calibration's seed count (the README, ``docs/calibration.md``'s command and the
  calibrator's default);
- the training results' outcomes (``docs/train-*.jsonl``, the runs' ``--metrics`` files);
- the recorded references' sizes and check times (``docs/recorded-cpu.md``);
- the porting-pitfall table (``docs/pitfalls.md`` row for row, its ratios ``docs/pitfalls.json``'s);
- the calibration table: each model's largest ``err / floor`` and failing rows, from the
  calibration file each row names (``docs/calibration-*.md`` and its ``.json``);
- each generated block (``<!-- generated: docs/X -->`` ... ``<!-- end generated -->``): the
  README holds ``docs/X`` verbatim, ``docs/X`` is what its script (``GENERATORS``) prints now
  from the saved runs (``docs/scripts/train_tables.py``, ``bench_tables.py``,
  ``parity_tables.py``), and every figure of the paragraph after the block is one of the
  block's.

Numbers are compared at the precision the README prints them (2 or 3 significant figures).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def _same(quoted: str, measured: float) -> bool:
    """``quoted`` is ``measured`` rounded to the significant figures ``quoted`` shows."""
    mantissa = quoted.lower().split("e")[0].lstrip("-")
    digits = len(mantissa.replace(".", "").lstrip("0")) or 1
    return float(quoted) == float(f"{measured:.{digits}g}")


def parity_figures(readme: str, docs: Path) -> list[str]:
    """Tie pre-activations, gap and row counts against the parity reports' JSON."""
    found = []
    reports = [
        json.loads((docs / f"parity-{m}cpu.json").read_text()) for m in ("", "cnn-", "resnet-", "gpt-")
    ]
    notes = " ".join(r["note"] for report in reports for r in report["rows"] if r["note"])
    ties = re.findall(rf"pre-activation torch ({NUMBER}), jax ({NUMBER})", notes)
    for torch_x, jax_x in re.findall(rf"pre-activation\s+({NUMBER}) in\s+torch, ({NUMBER}) in\s+jax", readme):
        if not any(_same(torch_x, float(t)) and _same(jax_x, float(j)) for t, j in ties):
            found.append(
                f"README: pre-activation {torch_x} in torch, {jax_x} in jax; docs/parity-*-cpu.json: "
                + (", ".join(f"{t} / {j}" for t, j in ties) or "no tie")
            )
    gaps = re.findall(rf"gap ({NUMBER}) rose above the accumulated bound ({NUMBER}) at step (\d+)", notes)
    for step, gap, bound in re.findall(rf"at step (\d+) \(gap ({NUMBER}) against ({NUMBER})\)", readme):
        if not any(s == step and _same(gap, float(g)) and _same(bound, float(b)) for g, b, s in gaps):
            found.append(f"README: gap {gap} against {bound} at step {step}; docs/parity-*-cpu.json: {gaps}")
    for name, pattern in (
        ("parity-cpu.json", rf"(\d+)/(\d+) rows pass, in ({NUMBER}) s"),
        ("parity-cpu-avx2.json", rf"passes (\d+)/(\d+)\s+rows in ({NUMBER}) s \(\[docs/parity-cpu-avx2\.md"),
        (
            "parity-cpu-avx2-workers1.json",
            rf"passes (\d+)/(\d+)\s+rows in ({NUMBER}) s\s+\(\[docs/parity-cpu-avx2-workers1\.json",
        ),
        *(
            (
                f"parity-{m}-cpu.json",
                rf"(\d+)/(\d+) rows within their bounds in ({NUMBER}) s \(\[docs/parity-{m}-cpu",
            )
            for m in ("cnn", "resnet", "gpt")
        ),
    ):
        saved = json.loads((docs / name).read_text())
        rows, passing = len(saved["rows"]), sum(bool(r["passed"]) for r in saved["rows"])
        quoted = re.findall(pattern, readme)
        if not quoted:
            found.append(f"README: no '{pattern}' sentence for docs/{name}")
        for ok, total, seconds in quoted:
            if (int(ok), int(total)) != (passing, rows) or round(saved["seconds"]) != round(float(seconds)):
                found.append(
                    f"README: {ok}/{total} rows in {seconds} s; docs/{name}: {passing}/{rows} in "
                    f"{saved['seconds']:.0f} s"
                )
    return found


def fault_table(readme: str, docs: Path) -> list[str]:
    """One README row per planted fault, with the figures its saved run measured."""
    from jaxnet.parity.faults import FAULTS

    found = []
    section = readme.split("## Planted faults", 1)[-1].split("\n## ", 1)[0]
    rows = {
        m[0]: m for m in re.findall(r"^\| ([\w-]+): [^|]+\| ([^|]+) \| (\S+) \| (\S+) \|$", section, re.M)
    }
    if set(rows) != set(FAULTS):
        found.append(
            f"README fault table: {len(rows)} rows, jaxnet.parity.faults: {len(FAULTS)} faults "
            f"(missing: {sorted(set(FAULTS) - set(rows))}, unknown: {sorted(set(rows) - set(FAULTS))})"
        )
    m = re.search(r"There are (\w+)\.", section)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]  # fmt: skip
    if m is None or m[1] not in words or words.index(m[1]) != len(FAULTS):
        found.append(f"README: 'There are {m[1] if m else '?'}.' planted faults; the code has {len(FAULTS)}")
    measured = {}
    calibration = (docs / "calibration.md").read_text()
    for name, row, f32, f64 in re.findall(
        r"^\| ([\w-]+): [^|]+\| ([^|]+) \| (\S+) \| (\S+) \|$", calibration, re.M
    ):
        measured[name] = (row, f32, f64)
    later = json.loads((docs / "faults-after-calibration-cpu.json").read_text())["faults"]
    for name, result in later.items():
        measured[name] = (
            f"{result['float32'][0]} ",
            f"{result['float32'][1]:.3g}",
            f"{result['float64'][1]:.3g}",
        )
    for name, (_, row, f32, f64) in rows.items():
        if name not in measured:
            found.append(f"README fault table: {name} has no saved measurement")
        elif (row.strip(), f32, f64) != (measured[name][0].strip(), *measured[name][1:]):
            found.append(f"README fault table: {name} {row.strip()} {f32} {f64}; measured {measured[name]}")
    return found


def constants(readme: str, docs: Path) -> list[str]:
    """K, and the calibration's seeds as the README, the calibration and the calibrator say."""
    from jaxnet.parity import calibrate
    from jaxnet.parity.verdict import K

    found = [f"README: K = {k}; jaxnet.parity.verdict.K = {K:g}" for k in re.findall(r"K = (\d+)", readme)
             if float(k) != K]  # fmt: skip
    seeds = {int(s) for s in re.findall(r"over (\d+) seeds", readme)}
    documented = {int(s) for s in re.findall(r"--seeds (\d+)", (docs / "calibration.md").read_text())}
    default = calibrate.parser().get_default("seeds")
    if len(seeds | documented | {default}) != 1:
        found.append(
            f"calibration seeds: README {sorted(seeds)}, docs/calibration.md {sorted(documented)}, "
            f"the calibrator's default {default}"
        )
    return found


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_results(readme: str, docs: Path) -> list[str]:
    """The training-results outcomes (accuracy, correct, loss) against the runs' saved
    ``--metrics`` files (``docs/train-*.jsonl``); the seconds columns are the machine's load."""
    found = []
    section = readme.split("## Training results", 1)[-1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (jax|torch) \| ([\d.]+)% \((\d+) / 10000\) \| ([\d.]+) \|", section, re.M)
    if "jax" not in {b for b, *_ in rows}:
        found.append("README training results: no jax row")
    for backend, accuracy, correct, loss in rows:
        last = _metrics(docs / f"train-tutorial-{backend}.jsonl")[-1]
        if (accuracy, int(correct), loss) != (
            f"{100 * last['accuracy']:.1f}",
            last["correct"],
            f"{last['test_loss']:.6f}",
        ):
            found.append(
                f"README training results, {backend}: {accuracy}% ({correct}), loss {loss}; "
                f"docs/train-tutorial-{backend}.jsonl: {last['correct']}, loss {last['test_loss']:.6f}"
            )
    quoted = re.search(
        r"reaches \*\*([\d.]+)% test accuracy\*\*\s+\(([\d.]+)% after epoch (\d+); ([\d.]+)% after (\d+)[;)]",
        section,
    )
    adamw = _metrics(docs / "train-adamw-jax.jsonl")
    if quoted is None:
        found.append("README training results: no AdamW sentence")
    else:
        top, top2, end, mid, at = quoted.groups()
        wanted = (f"{100 * adamw[-1]['accuracy']:.1f}", f"{100 * adamw[-1]['accuracy']:.2f}", str(len(adamw)),
                  f"{100 * adamw[int(at) - 1]['accuracy']:.1f}")  # fmt: skip
        if (top, top2, end, mid) != wanted:
            found.append(
                f"README AdamW: {top}% / {top2}% after {end}, {mid}% after {at}; docs/train-adamw-jax.jsonl: {wanted}"
            )
    return found


def recorded_tables(readme: str, docs: Path) -> list[str]:
    """The recorded-reference section's tables (bundle sizes, check times): each row as
    ``docs/recorded-cpu.md`` has it (``python -m parity_tests.recorded_sizes`` writes it from
    its JSON, and the suite holds the two equal)."""
    section = readme.split("## Parity in your own test suite and CI", 1)[-1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"^\| (mlp|cnn|block|bn|gpt) \|", line)]
    saved = set((docs / "recorded-cpu.md").read_text().splitlines())
    found = [f"README recorded references: {row!r} is not a row of docs/recorded-cpu.md" for row in rows
             if row not in saved]  # fmt: skip
    if not rows:
        found.append("README recorded references: no table rows from docs/recorded-cpu.md")
    return found


GENERATORS = {
    "train-gpu.md": ("train_tables.py", "gpu"),
    "train-tutorial-cpu.md": ("train_tables.py", "tutorial"),
    "train-cnn-cpu.md": ("train_tables.py", "cnn"),
    "bench-families-cpu.md": ("bench_tables.py", "families"),
    "bench-mlp-cnn-cpu.md": ("bench_tables.py", "mlp-cnn"),
    "bench-allocator-cpu.md": ("bench_tables.py", "allocator"),
    "suite-table-cpu.md": ("suite_time.py", "table"),
    "parity-sections-mlp.md": ("parity_tables.py", "mlp"),
    "parity-sections-cnn.md": ("parity_tables.py", "cnn"),
    "parity-sections-ports.md": ("parity_tables.py", "ports"),
}  # docs/X -> the docs/scripts/ that prints it, and its arguments


def generated_blocks(readme: str, docs: Path) -> list[str]:
    """Generated blocks against their files, the files against their scripts' output, and the
    figures of the paragraph after each block against the block."""
    import contextlib
    import io
    import runpy

    found = []
    blocks = re.findall(
        r"<!-- generated: docs/(\S+) -->\n(.*?)<!-- end generated -->\n\n(.*?)(?:\n\n|$)", readme, re.S
    )
    for name, text, after in blocks:
        if not (docs / name).is_file():
            found.append(f"README: generated block docs/{name}: no such file")
            continue
        saved = (docs / name).read_text()
        if text != saved:
            found.append(f"README: the generated block of docs/{name} differs from the file")
        if name not in GENERATORS:
            found.append(f"README: generated block docs/{name} has no script in docs_check.GENERATORS")
            continue
        script, *args = GENERATORS[name]
        script = docs / "scripts" / script
        if not script.is_file():
            found.append(f"docs/{name}: its script docs/scripts/{script.name} is missing")
        else:
            out, argv = io.StringIO(), sys.argv
            sys.argv = [str(script), *args]
            try:
                with contextlib.redirect_stdout(out):
                    runpy.run_path(str(script), run_name="__main__")
            finally:
                sys.argv = argv
            if out.getvalue() != saved:
                found.append(f"docs/{name}: not what docs/scripts/{script.name} prints from the saved runs")
        for figure in re.findall(r"\d+\.\d+", after):
            if figure not in text:
                found.append(f"README: {figure} (after the generated block of docs/{name}) is not in it")
    if "<!-- generated:" in readme and not blocks:
        found.append("README: a generated block without its end marker and a paragraph after it")
    return found


def pitfall_table(readme: str, docs: Path) -> list[str]:
    """The README's pitfall table is docs/pitfalls.md's, row for row, and each of its ratios is
    docs/pitfalls.json's."""
    found = []
    table = re.compile(r"^\| (?!pitfall \||---).*\|$", re.M)
    section = readme.split("The pitfall table:", 1)[-1].split("\n\n", 2)[:2]
    quoted = table.findall(section[-1]) if len(section) == 2 else []
    saved = table.findall((docs / "pitfalls.md").read_text())
    if not quoted or quoted != saved:
        found.append(
            f"README pitfall table: {len(quoted)} rows, not docs/pitfalls.md's {len(saved)} verbatim"
        )
    measured_rows = json.loads((docs / "pitfalls.json").read_text())
    if len(measured_rows) != len(saved):
        found.append(f"docs/pitfalls.md: {len(saved)} rows, docs/pitfalls.json: {len(measured_rows)}")
    for row, measured in zip(saved, measured_rows, strict=False):
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell, dtype in ((cells[2], "float32"), (cells[4], "float64")):
            got = measured[dtype]
            if (got is None) != (cell == "-") or (got is not None and not _same(cell, got["ratio"])):
                found.append(f"docs/pitfalls.md: {cells[0]} {dtype} {cell}; docs/pitfalls.json: {got}")
    return found


def calibration_table(readme: str, docs: Path) -> list[str]:
    """Each row of the README's calibration table (model, largest err / floor, rows failing,
    file) is that model's section of the named calibration file."""
    found = []
    rows = re.findall(r"^\s*\| (\w+) \| ([\d.]+) \| (\d+) \| \[docs/(\S+?)\]", readme, re.M)
    from jaxnet.parity.calibrate import MODELS

    if sorted(r[0] for r in rows) != sorted(MODELS):
        found.append(
            f"README calibration table: models {sorted(r[0] for r in rows)}, the calibrator's {sorted(MODELS)}"
        )
    for model, largest, failing, name in rows:
        if not (docs / name).is_file() or not (docs / name).with_suffix(".json").is_file():
            found.append(f"README calibration table: {model}: no docs/{name} and its .json")
            continue
        text = (docs / name).read_text()
        section = text.split(f"## {model}\n", 1)[-1].split("\n## ", 1)[0]
        top = re.search(r"Largest over every row and order: ([\d.]+)", section)
        runs = json.loads((docs / name).with_suffix(".json").read_text())["runs"]
        failed = sum(len(r["failed"]) for r in runs if r["model"] == model)
        if f"## {model}\n" not in text or top is None or top[1] != largest or int(failing) != failed:
            found.append(
                f"README calibration table: {model} {largest}, {failing} failing; docs/{name}: "
                f"{top[1] if top else '?'}, {failed} failing"
            )
    return found


def mlp_calibration(readme: str, docs: Path) -> list[str]:
    """The K paragraph's summary of docs/calibration.md: the largest err / floor of rows computed
    once or teacher-forced, of the float32 and float64 trajectories, and the planted faults'
    smallest first-row margin."""
    text = (docs / "calibration.md").read_text()
    table = re.findall(
        r"^\| (\w+) (float\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, re.M
    )
    largest = {}
    for kind, dtype, *cells in table:
        key = kind + (f" {dtype}" if kind == "trajectory" else "")
        largest[key] = max(largest.get(key, 0.0), *map(float, cells))
    once = max(v for k, v in largest.items() if not k.startswith("trajectory"))
    faults = [float(m) for m in re.findall(r"^\| [\w-]+: [^|]+\| [^|]+\| ([\d.e+]+) \|", text, re.M)]
    later = json.loads((docs / "faults-after-calibration-cpu.json").read_text())["faults"]
    faults += [result["float32"][1] for result in later.values()]  # faults added after the calibration
    quoted = re.search(
        rf"reach at most ({NUMBER}) times their floor, free-running trajectories ({NUMBER}) \(float32\) and\s+"
        rf"({NUMBER}) \(one\s+float64.*?first failing rows sit at ({NUMBER}) times K",
        readme,
        re.S,
    )
    if quoted is None:
        return ["README: no K paragraph summarising docs/calibration.md"]
    measured = (
        once,
        largest.get("trajectory float32", 0.0),
        largest.get("trajectory float64", 0.0),
        min(faults),
    )
    if not all(_same(q, m) for q, m in zip(quoted.groups(), measured, strict=True)):
        return [f"README K paragraph: {quoted.groups()}; docs/calibration.md: {measured}"]
    return []


def problems(readme: str | None = None, docs: Path = ROOT / "docs") -> list[str]:
    """Every disagreement between ``readme`` (default: README.md) and the saved outputs."""
    text = (ROOT / "README.md").read_text() if readme is None else readme
    checks = (parity_figures, fault_table, constants, mlp_calibration, training_results, recorded_tables, generated_blocks,
              pitfall_table, calibration_table)  # fmt: skip
    return [line for check in checks for line in check(text, docs)]


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"{len(found)} disagreement(s) between README.md and docs/", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
