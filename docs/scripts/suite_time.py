"""The suite's time on this machine: measure `make test`'s commands, and print the README's table.

    python docs/scripts/suite_time.py run --label "quiet machine"   # appends to docs/suite-cpu.json
    python docs/scripts/suite_time.py table > docs/suite-table-cpu.md

``run`` runs what ``make test`` runs (``ruff check``, ``ruff format --check``, then ``pytest -n 2
--dist loadfile``; from the repository root, with this interpreter), and saves the wall time,
the user and system CPU time of all its processes (``RUSAGE_CHILDREN``), pytest's counts and
every test's duration summed per file. ``table`` prints the last saved run as the README
quotes it. The README holds that output verbatim between ``<!-- generated: docs/X -->``
markers; ``jaxnet.docs_check`` fails when the two differ or when the file is not what this
script prints from docs/suite-cpu.json.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "docs" / "suite-cpu.json"
BIN = Path(sys.executable).parent


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run(label: str) -> dict:
    pytest = [str(BIN / "python"), "-m", "pytest", "-n", "2", "--dist", "loadfile", "-q",
              "-p", "no:cacheprovider", "--durations=0"]  # fmt: skip
    start = time.perf_counter()
    for lint in ([str(BIN / "ruff"), "check", "."], [str(BIN / "ruff"), "format", "--check", "."]):
        subprocess.run(lint, cwd=ROOT, check=True, capture_output=True)
    out = subprocess.run(pytest, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.stdout + out.stderr
    counts = {
        k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", text.splitlines()[-1])
    }
    per_file: dict[str, float] = collections.defaultdict(float)
    for seconds, test in re.findall(r"^(\d+\.\d+)s (?:call|setup|teardown)\s+(\S+)", text, re.M):
        per_file[test.split("::")[0]] += float(seconds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {
        "label": label,
        "commit": commit.stdout.strip(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "returncode": out.returncode,
        "counts": counts,
        "pytest_s": float(re.findall(r" in (\d+\.\d+)s", text)[-1]),
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "per_file_s": dict(sorted(per_file.items(), key=lambda kv: -kv[1])),
    }


def minutes(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)  # 479.7 s is 8:00, not 7:60
    return f"{minutes}:{rest:02d}"


def table() -> list[str]:
    r = json.loads(SAVED.read_text())[-1]
    counts = ", ".join(f"{n} {k}" for k, n in r["counts"].items())
    out = [
        f"`make test` at {r['commit']} ({r['date']}; {r['label']}) on {r['cores']} cores of an {r['cpu']}: "
        f"{counts}; pytest {minutes(r['pytest_s'])}, ruff and pytest {minutes(r['wall_s'])} of wall time, "
        f"{minutes(r['user_s'] + r['sys_s'])} of CPU time (user {minutes(r['user_s'])}, system {minutes(r['sys_s'])}).",
        "",
        "| file | sum of its tests' durations, s |",
        "|---|---|",
    ]
    out += [f"| {name} | {seconds:.1f} |" for name, seconds in r["per_file_s"].items() if seconds >= 5]
    rest = [s for s in r["per_file_s"].values() if s < 5]
    out.append(f"| {len(rest)} other files | {sum(rest):.1f} |")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"] and len(sys.argv) == 4 and sys.argv[2] == "--label":
        saved = json.loads(SAVED.read_text()) if SAVED.is_file() else []
        result = run(sys.argv[3])
        SAVED.write_text(json.dumps([*saved, result], indent=1) + "\n")
        print("\n".join(table()))
        sys.exit(result["returncode"])
    elif sys.argv[1:] == ["table"]:
        print("\n".join(table()))
    else:
        sys.exit("usage: suite_time.py run --label TEXT | table")
