"""The README's code runs: its "Porting your own model" snippet, executed as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(heading: str) -> str:
    """The first ```python block under ``heading``."""
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_porting_snippet_runs_and_passes(fmnist, capsys):
    code = python_block("## Porting your own model")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # its own `assert report.passed`
    report = namespace["report"]
    assert report.passed and report.environment["first difference"].startswith("none")
    assert any(r.kind == "running" for r in report.rows)  # BatchNorm's statistics were compared
    assert "first difference" not in capsys.readouterr().err
