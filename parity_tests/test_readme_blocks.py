"""The README's command blocks run as written (``make test-readme``, which CI runs after the suite).

The ordinary suite checks that every block says how it is run (:mod:`parity_tests.readme_blocks`);
the ``readme`` tests run the ``ci`` blocks, in the README's order, in one scratch copy of the
repository, so a command or snippet that stops working fails here, not in a reader's hands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from parity_tests.conftest import STARTED_WITH
from parity_tests.readme_blocks import README, blocks

ROOT = README.parent
RUN = [b for b in blocks() if b.run == "ci"]


def test_every_block_says_how_it_is_run():
    found = blocks()
    assert len(found) >= 8  # the scan sees the README's blocks
    missing = [str(b) for b in found if b.run is None]
    assert not missing, f"blocks with no <!-- readme-run: ... --> note: {missing}"
    for b in found:
        if b.run == "no":
            assert len(b.detail.split()) >= 3, f"{b}: say why it is not run"
        if b.run == "suite":
            assert (ROOT / b.detail).is_file(), f"{b}: no test file {b.detail!r}"
    assert len(RUN) >= 5  # most of the README is run, not excused


def test_a_block_without_a_note_is_found():
    text = "x\n<!-- readme-run: no: needs a GPU here -->\n```sh\njaxnet a\n```\n\n```python\nprint(1)\n```\n"
    first, second = blocks(text)
    assert (first.run, first.detail, first.line) == ("no", "needs a GPU here", 3)
    assert (second.run, second.code) == (None, "print(1)\n")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The tracked files (mtimes kept, so make sees the environment as installed), the
    environment itself linked: what a fresh clone after ``make`` looks like."""
    root = tmp_path_factory.mktemp("readme")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in tracked.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    (root / ".venv").symlink_to(ROOT / ".venv")
    return root


@pytest.fixture(scope="module")
def namespace() -> dict:
    """The python blocks' shared names, as in one reader's session."""
    return {}


@pytest.mark.readme
@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[f"{i}-{b.language}-line{b.line}" for i, b in enumerate(RUN, 1)])
def test_block_runs(block, scratch, namespace, monkeypatch):
    monkeypatch.chdir(scratch)
    if block.language == "sh":
        # the environment the suite started in, not its own XLA settings and caches (conftest)
        env = STARTED_WITH | {"PATH": f"{scratch / '.venv' / 'bin'}{os.pathsep}{STARTED_WITH['PATH']}"}
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", block.code],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
        )
        tail = (done.stdout + done.stderr)[-3000:]
        assert done.returncode == 0, f"{block} exited {done.returncode}:\n{tail}"
    else:
        sys.path.insert(0, str(scratch))
        try:
            before = set(namespace)
            exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
            for name in sorted(set(namespace) - before):  # a snippet of a user's tests: run them
                if name.startswith("test_") and callable(namespace[name]):
                    namespace[name]()
        finally:
            sys.path.remove(str(scratch))
