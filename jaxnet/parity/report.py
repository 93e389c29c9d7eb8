"""What a parity run produces: rows of verdicts, and their renderings (table, markdown, JSON, plot).

Every row states the number its verdict is taken on (``err``), the measured noise floor of
that number (``floor``), the bound (``K * floor``) and their ratio; it passes exactly when
``err <= bound``. Informational columns follow: the normwise relative error, the error in
ulps of the row's own dtype, the cosine and where the largest difference sits.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jaxnet.numerics import Error


@dataclass
class Row:
    section: str  # forward | gradient | probe | step | trajectory | epoch
    quantity: str
    dtype: str
    err: float  # what the verdict compares (a relative error, or a count)
    floor: float  # the measured noise floor of ``err``, same units
    bound: float  # the largest ``err`` that passes (K * floor, or a count allowance)
    passed: bool
    error: Error | None = None  # normwise details, for arrays
    note: str = ""  # per-element detail, the cause of a divergence, the other side's float64 error
    kind: str = (
        ""  # what the row measures: output, flip, shape, running, loss, gradient, probe (forward rows)
    )

    @property
    def ratio(self) -> float:
        """``err / bound``: at most 1 passes; above 1 it is the factor by which it fails."""
        if self.bound > 0:
            return self.err / self.bound
        return 0.0 if self.err == 0 else math.inf


@dataclass
class Report:
    rows: list[Row]
    environment: dict[str, str]
    histories: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # "dtype recipe" -> series
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.passed]

    def first_failure(self, dtype: str | None = None) -> Row | None:
        return next((r for r in self.failures if dtype in (None, r.dtype)), None)


COLUMNS = ("section", "quantity", "dtype", "err", "floor", "bound", "ratio", "ok", "rel", "ulps", "cosine", "worst at", "note")  # fmt: skip


def _num(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e6 and x != 0):
        return str(int(x))
    return "0" if x == 0 else ("inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}"))


def cells(row: Row) -> tuple[str, ...]:
    e = row.error
    info = (
        (_num(e.rel), f"{e.ulps:.3g}", f"{e.cosine:.9f}", str(list(e.worst)) if e.worst else "")
        if e is not None
        else ("", "", "", "")
    )
    ok = "pass" if row.passed else "FAIL"
    return (row.section, row.quantity, row.dtype, _num(row.err), _num(row.floor), _num(row.bound),
            f"{row.ratio:.3g}", ok, *info, row.note)  # fmt: skip


def summary(report: Report) -> str:
    bad = report.failures
    head = (
        f"{len(report.rows) - len(bad)}/{len(report.rows)} rows within their bounds in {report.seconds:.1f} s"
    )
    if not bad:
        return head
    first = bad[0]
    return f"{head}; first failure: {first.section} / {first.quantity} ({first.dtype}, {first.ratio:.3g}x its bound)"


def text_table(report: Report) -> list[str]:
    """The rows as plain text, one line each under a header, columns padded to their widest
    cell (numbers right-aligned): the same cells as :func:`markdown`. A row never folds, so a
    line is a row whatever the terminal's width, and ``grep FAIL`` finds every failing one."""
    lines = [COLUMNS, *(tuple(c.replace("\n", " ") for c in cells(row)) for row in report.rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    right = {"err", "floor", "bound", "ratio", "rel", "ulps", "cosine"}

    def join(cols) -> str:
        parts = (
            c.rjust(w) if n in right else c.ljust(w) for c, w, n in zip(cols, widths, COLUMNS, strict=True)
        )
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [join(lines[0]), rule, *map(join, lines[1:])]


def print_table(report: Report) -> None:
    """The environment, every row (:func:`text_table`; failing rows in bold red on a terminal)
    and the summary line. The rows are padded text, not a rich ``Table``, which measured and
    folded each of the 13 cells of every row (docs/parity-table-print-cpu.md: seconds for a
    ResNet report)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console() if Console().is_terminal else Console(width=250)
    env = Table(title="environment", show_header=False)
    for key, value in report.environment.items():
        env.add_row(key, escape(value))
    console.print(env)
    head, rule, *lines = text_table(report)
    text = Text()  # Text is never read as markup: a quantity or note prints as it is
    text.append("jaxnet parity: jax against torch (pass: err <= bound = K x floor)\n", style="italic")
    text.append(f"{head}\n{rule}\n", style="bold")
    for row, line in zip(report.rows, lines, strict=True):
        text.append(line + "\n", style=None if row.passed else "bold red")
    text.append(summary(report), style="green" if report.passed else "bold red")
    console.print(text, soft_wrap=True)


def markdown(report: Report) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.environment.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |" for row in report.rows]
    lines += ["", summary(report), ""]
    return "\n".join(lines)


def to_json(report: Report) -> dict:
    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    rows = []
    for row in report.rows:
        item = {k: clean(v) for k, v in asdict(row).items() if k != "error"}
        item["ratio"] = clean(row.ratio)
        item["error"] = None if row.error is None else {k: clean(v) for k, v in asdict(row.error).items()}
        rows.append(item)
    return {
        "passed": report.passed,
        "seconds": report.seconds,
        "environment": report.environment,
        "rows": rows,
        "histories": report.histories,
    }


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(report), indent=1))


def plot(report: Report, path: Path) -> None:
    """One panel per (dtype, recipe): the free-running gap and the accumulated teacher-forced
    bound against step, and the teacher-forced ratio of each step (dotted, right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report.histories)
    cols = min(4, len(keys)) or 1
    nrows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False, constrained_layout=True
    )
    tiny = 1e-18  # exact agreement drawn at the floor of the log axis
    for ax, key in zip(axes.flat, keys, strict=False):
        series = report.histories[key]
        steps = range(1, len(series["gap"]) + 1)
        ax.plot(steps, [max(v, tiny) for v in series["gap"]], label="free-running gap")
        ax.plot(steps, series["bound"], "--", label="accumulated teacher-forced bound")
        ax.set(yscale="log", title=key, xlabel="step", ylabel="rel error")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(steps, [max(v, tiny) for v in series["ratio"]], ":", color="gray", linewidth=0.8)
        twin.set(yscale="log", ylabel="teacher-forced err / bound")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
