"""Loss and accuracy per epoch, one or several runs overlaid (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

from jaxnet.errors import JaxnetError


def read_metrics(path: Path) -> list[dict]:
    """The JSON lines written by ``jaxnet train --metrics``."""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        rows = [json.loads(line) for line in lines]
    except OSError as err:
        raise JaxnetError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise JaxnetError(f"{path}: not JSON lines ({err.msg} at line {err.lineno})") from None
    missing = [k for k in ("epoch", "train_loss", "test_loss", "accuracy") for r in rows if k not in r]
    if not rows or missing:
        raise JaxnetError(f"{path}: no metrics rows" if not rows else f"{path}: rows lack {missing[0]!r}")
    return rows


def plot_runs(runs: dict[str, list[dict]], output: Path) -> None:
    """Two panels: train and test loss (log scale), and test accuracy, against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for label, rows in runs.items():
        epochs = [r["epoch"] for r in rows]
        (line,) = ax_loss.plot(epochs, [r["train_loss"] for r in rows], "-", label=f"{label} train")
        ax_loss.plot(
            epochs, [r["test_loss"] for r in rows], "--", color=line.get_color(), label=f"{label} test"
        )
        ax_acc.plot(epochs, [100 * r["accuracy"] for r in rows], "o-", label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
