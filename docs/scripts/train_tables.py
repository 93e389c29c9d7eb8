"""The README's training tables, from the runs' saved ``--metrics`` files.

    python docs/scripts/train_tables.py gpu      > docs/train-gpu.md
    python docs/scripts/train_tables.py tutorial > docs/train-tutorial-cpu.md
    python docs/scripts/train_tables.py cnn      > docs/train-cnn-cpu.md

``gpu`` reads ``docs/train-resnet-{torch,jax}-gpu.jsonl`` and
``docs/train-gpt-{backend}-s{seed}-gpu.jsonl`` (written by ``docs/scripts/gpu_train.sh``);
``tutorial`` reads ``docs/train-tutorial-{jax,torch}.jsonl`` (``jaxnet train --backend B
--no-shuffle --metrics ...``); ``cnn`` reads ``docs/train-cnn-{torch,jax}.jsonl``
(``jaxnet train --model cnn --backend B --epochs 5 --metrics ...``). The CPU tables hold
outcomes only: their runs shared the machine, and speed is ``jaxnet bench``'s. The README
holds each output verbatim between ``<!-- generated: docs/X -->`` markers;
``jaxnet.docs_check`` fails when the two differ.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]


def metrics(name: str) -> list[dict]:
    return [json.loads(line) for line in (DOCS / name).read_text().splitlines() if line.strip()]


def resnet() -> list[str]:
    runs = {b: metrics(f"train-resnet-{b}-gpu.jsonl") for b in ("torch", "jax")}
    out = [
        "| epoch | torch test accuracy | jax test accuracy | torch test loss | jax test loss |",
        "|---|---|---|---|---|",
    ]
    for t, j in zip(runs["torch"], runs["jax"], strict=True):
        out.append(
            f"| {t['epoch']} | {100 * t['accuracy']:.2f}% | {100 * j['accuracy']:.2f}% "
            f"| {t['test_loss']:.4f} | {j['test_loss']:.4f} |"
        )
    for b, rows in runs.items():  # the first epoch also compiles (jax) or warms up (cudnn)
        med = statistics.median(r["seconds"] for r in rows[1:])
        out.append(
            f"\n{b}: {rows[-1]['correct']} / 10000 correct after {len(rows)} epochs; median epoch {med:.2f} s"
        )
    return out


def gpt() -> list[str]:
    names = [(b, s) for b in ("torch", "jax") for s in (0, 1)]
    runs = {n: metrics(f"train-gpt-{n[0]}-s{n[1]}-gpu.jsonl") for n in names}
    head = " | ".join(f"{b} seed {s}" for b, s in names)
    out = [f"| epoch | {head} |", "|---" * (len(names) + 1) + "|"]
    for i in range(len(runs[names[0]])):
        out.append(
            f"| {i + 1} | " + " | ".join(f"{runs[n][i]['val_nats_per_char']:.4f}" for n in names) + " |"
        )
    last = {n: runs[n][-1]["val_nats_per_char"] for n in names}
    within = {b: abs(last[(b, 0)] - last[(b, 1)]) for b in ("torch", "jax")}
    mean = {b: (last[(b, 0)] + last[(b, 1)]) / 2 for b in ("torch", "jax")}
    same_seed = [abs(last[("torch", s)] - last[("jax", s)]) for s in (0, 1)]
    out.append(
        f"\nafter the last epoch: seed 0 against seed 1, torch {within['torch']:.4f}, jax {within['jax']:.4f}; "
        f"torch against jax, seed 0 {same_seed[0]:.4f}, seed 1 {same_seed[1]:.4f}; "
        f"the backends' means {abs(mean['torch'] - mean['jax']):.4f} apart"
    )
    for b in ("torch", "jax"):
        med = statistics.median(r["seconds"] for s in (0, 1) for r in runs[(b, s)][1:])
        out.append(f"{b}: median epoch ({runs[(b, 0)][0]['step']} steps) {med:.2f} s")
    return out


def tutorial() -> list[str]:
    out = ["| backend | test accuracy after 10 epochs | avg loss |", "|---|---|---|"]
    for b in ("jax", "torch"):
        last = metrics(f"train-tutorial-{b}.jsonl")[-1]
        out.append(
            f"| {b} | {100 * last['accuracy']:.1f}% ({last['correct']} / 10000) | {last['test_loss']:.6f} |"
        )
    return out


def cnn() -> list[str]:
    runs = {b: metrics(f"train-cnn-{b}.jsonl") for b in ("torch", "jax")}
    out = ["| epoch | torch: test accuracy, loss | jax: test accuracy, loss |", "|---|---|---|"]
    for epoch in range(1, max(len(r) for r in runs.values()) + 1):
        cells = [
            f"{100 * r[epoch - 1]['accuracy']:.1f}%, {r[epoch - 1]['test_loss']:.4f}"
            if epoch <= len(r)
            else "-"
            for r in runs.values()
        ]
        out.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return out


def gpu() -> list[str]:
    lines = ["ResNet (16/32/64 channels, 2 blocks a stage), `jaxnet train --model resnet`:", "", *resnet()]
    lines += [
        "",
        "GPT (character-level, fortunes), validation nats per character, `jaxnet train --model gpt`:",
        "",
    ]
    return lines + gpt()


if __name__ == "__main__":
    tables = {"gpu": gpu, "tutorial": tutorial, "cnn": cnn}
    if len(sys.argv) != 2 or sys.argv[1] not in tables:
        sys.exit(f"usage: train_tables.py {{{','.join(tables)}}}")
    sys.stdout.write("\n".join(tables[sys.argv[1]]()) + "\n")
