"""The README's per-section parity tables, from the saved reports' JSON.

    python docs/scripts/parity_tables.py mlp   > docs/parity-sections-mlp.md
    python docs/scripts/parity_tables.py cnn   > docs/parity-sections-cnn.md
    python docs/scripts/parity_tables.py ports > docs/parity-sections-ports.md

One row per section of the report (``jaxnet parity --json``), one column per report and
dtype: how many rows the section has, the closest one comes to its bound (``err / bound``,
two significant figures) and which row that is; a free-running pair that left its accumulated
bound for an explained cause (a tie, a near-zero gradient) and a failing row are counted
beside it. The README holds each output verbatim between ``<!-- generated: docs/X -->``
markers; ``jaxnet.docs_check`` fails when the two differ or when the file is not what this
script prints from the saved reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]

REPORTS = {  # table -> (saved report, its column label)
    "mlp": [("parity-cpu.json", "")],
    "cnn": [("parity-cnn-cpu.json", "")],
    "ports": [("parity-resnet-cpu.json", "ResNet "), ("parity-gpt-cpu.json", "GPT ")],
}


def cell(rows: list[dict]) -> str:
    """``n, worst err / bound (its row)``, with the explained divergences and failures counted."""
    if not rows:
        return "-"
    worst = max(rows, key=lambda r: r["ratio"])
    text = f"{len(rows)}, {worst['ratio']:.2g} ({worst['quantity']})"
    explained = sum(r["passed"] and "rose above the accumulated bound" in r["note"] for r in rows)
    failing = sum(not r["passed"] for r in rows)
    if explained:
        text += f"; {explained} explained divergence" + ("s" if explained > 1 else "")
    if failing:
        text += f"; {failing} FAILING"
    return text


def table(name: str) -> list[str]:
    columns = []  # (label, rows of that report and dtype)
    sections: list[str] = []
    for file, label in REPORTS[name]:
        rows = json.loads((DOCS / file).read_text())["rows"]
        at = 0  # a section new to the table goes after this report's previous one
        for r in rows:
            if r["section"] in sections:
                at = max(at, sections.index(r["section"]) + 1)
            else:
                sections.insert(at, r["section"])
                at += 1
        for dtype in ("float32", "float64"):
            columns.append((f"{label}{dtype}", [r for r in rows if r["dtype"] == dtype]))
    out = [
        "| section | " + " | ".join(f"{label}: n, worst err / bound" for label, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for section in sections:
        cells = [cell([r for r in rows if r["section"] == section]) for _, rows in columns]
        out.append(f"| {section} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in REPORTS:
        sys.exit(f"usage: parity_tables.py {{{','.join(REPORTS)}}}")
    print("\n".join(table(sys.argv[1])))
