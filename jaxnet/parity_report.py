"""Rendering a parity report: a rich table, markdown, JSON and a plot of error against step."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from jaxnet.parity import Report, Row

COLUMNS = (
    "section",
    "quantity",
    "dtype",
    "max abs",
    "rel",
    "ulps",
    "cosine",
    "worst at",
    "tol",
    "ok",
    "vs float64",
)


def _num(x: float) -> str:
    return "0" if x == 0 else ("inf" if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.2e}"))


def _cells(row: Row) -> tuple[str, ...]:
    e = row.error
    return (
        row.section,
        row.quantity,
        row.dtype,
        _num(e.max_abs),
        _num(e.rel),
        f"{e.ulps:.3g}",
        f"{e.cosine:.9f}",
        str(list(e.worst)) if e.worst else "",
        _num(row.tol),
        "pass" if row.passed else "FAIL",
        row.vs_f64,
    )


def summary(report: Report) -> str:
    bad = report.failures
    head = f"{len(report.rows) - len(bad)}/{len(report.rows)} within tolerance in {report.seconds:.1f} s"
    return (
        head
        if not bad
        else head + "; first failure: " + f"{bad[0].section} / {bad[0].quantity} ({bad[0].dtype})"
    )


def print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=220)
    env = Table(title="environment", show_header=False)
    for key, value in report.environment.items():
        env.add_row(key, value)
    console.print(env)
    table = Table(title="jaxnet parity: jax vs torch (rel = max|a-b| / max|b|)")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in report.rows:
        table.add_row(*_cells(row), style=None if row.passed else "bold red")
    console.print(table)
    console.print(summary(report), style="green" if report.passed else "bold red")


def markdown(report: Report) -> str:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report.environment.items()]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |" for row in report.rows]
    lines += ["", summary(report), ""]
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    def clean(x):
        return None if isinstance(x, float) and not math.isfinite(x) else x

    rows = []
    for row in report.rows:
        item = asdict(row)
        item["error"] = {k: clean(v) for k, v in item["error"].items()}
        rows.append(item)
    payload = {
        "passed": report.passed,
        "seconds": report.seconds,
        "environment": report.environment,
        "rows": rows,
        "histories": report.histories,
        "tolerances": report.tolerances,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def plot(report: Report, path: Path) -> None:
    """One panel per (dtype, optimizer): each parameter's error against step (solid) and its
    tolerance (dotted, same colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(report.histories)
    cols = min(4, len(keys)) or 1
    rows = math.ceil(len(keys) / cols) or 1
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False, constrained_layout=True
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        floor = 1e-18  # exact agreement drawn at the floor of the log axis
        for name, errors in report.histories[key].items():
            steps = range(1, len(errors) + 1)
            (line,) = ax.plot(
                steps, [max(e, floor) for e in errors], label=name.removeprefix("linear_relu_stack.")
            )
            ax.plot(steps, report.tolerances[key][name], ":", color=line.get_color(), linewidth=0.8)
        ax.set(yscale="log", title=key, xlabel="step", ylabel="rel error")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
