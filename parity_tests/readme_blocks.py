"""The README's fenced code blocks, each with the note that says how the suite runs it.

Every ``sh``, ``python`` and ``yaml`` block is preceded by one of::

    <!-- readme-run: ci -->                 run by the README job (``make test-readme``), in order
    <!-- readme-run: suite TEST_FILE -->    run by a test of the ordinary suite, named
    <!-- readme-run: no: REASON -->         not run, and why (a GPU, hours of training, ...)

The README job runs the ``ci`` blocks in the order a reader meets them, in one scratch copy of
the repository: shell blocks line by line under ``bash -eo pipefail``, python blocks in one
shared namespace (a later snippet may use an earlier one's names, as a reader's session would).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
LANGUAGES = ("sh", "python", "yaml")  # the blocks that are commands or code
_NOTE = re.compile(r"<!--\s*readme-run:\s*(ci|suite|no)\b:?\s*(.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    run: str | None  # "ci", "suite", "no", or None where the note is missing
    detail: str  # the suite test's file, or the reason a block is not run

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.language})"


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block with a language of :data:`LANGUAGES`, with its note (if any) from
    the nearest non-blank line above its fence."""
    lines = (README.read_text() if text is None else text).splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in LANGUAGES:
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            note = _NOTE.search(above)
            out.append(
                Block(
                    line=i + 1,
                    language=fence.group(1),
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    run=note.group(1) if note else None,
                    detail=note.group(2) if note else "",
                )
            )
        i = end + 1
    return out
