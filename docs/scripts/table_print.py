"""How long printing a parity report's rows takes: rich's ``Table`` (how ``print_table`` printed
them before 1f041d6) against :func:`jaxnet.parity.report.print_table` now (padded text, with its
empty environment table and summary line).

    python docs/scripts/table_print.py > docs/parity-table-print-cpu.md

Renders the rows of the saved full-size reports (docs/parity-{mlp,cnn,resnet,gpt}-cpu.json;
the MLP's is docs/parity-cpu.json) into memory at the 250 columns ``print_table`` uses off a
terminal, best of 3 each way.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import subprocess
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jaxnet.numerics import Error
from jaxnet.parity.report import COLUMNS, Report, Row, cells, print_table

DOCS = Path(__file__).resolve().parents[1]
REPORTS = {"mlp": "parity-cpu.json", "cnn": "parity-cnn-cpu.json", "resnet": "parity-resnet-cpu.json",
           "gpt": "parity-gpt-cpu.json"}  # fmt: skip


def load(path: Path) -> Report:
    rows = []
    for r in json.loads(path.read_text())["rows"]:
        r = dict(r)
        error, _ = r.pop("error"), r.pop("ratio")
        r |= {k: float("nan") if r[k] is None else r[k] for k in ("err", "floor", "bound")}
        rows.append(Row(**r, error=None if error is None else Error(**error)))
    return Report(rows, {})


def rich_table(report: Report, console: Console) -> None:
    table = Table(title="jaxnet parity: jax against torch (pass: err <= bound = K x floor)")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in report.rows:
        table.add_row(*map(escape, cells(row)), style=None if row.passed else "bold red")
    console.print(table)


def padded_text(report: Report, console: Console) -> None:
    with contextlib.redirect_stdout(console.file):  # print_table itself, off a terminal: 250 columns
        print_table(report)


def best(draw, report: Report) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        draw(report, Console(file=io.StringIO(), width=250))
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=DOCS, capture_output=True, text=True)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"`python docs/scripts/table_print.py` at {commit.stdout.strip()}, {date}: printing the rows of "
          "the saved full-size reports into memory, 250 columns, best of 3 (seconds).\n")  # fmt: skip
    print("| report | rows | rich Table | print_table (padded text) |\n|---|---|---|---|")
    for name, file in REPORTS.items():
        report = load(DOCS / file)
        print(
            f"| {name} | {len(report.rows)} | {best(rich_table, report):.3f} | {best(padded_text, report):.3f} |"
        )


if __name__ == "__main__":
    main()
