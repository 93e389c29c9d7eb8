"""``jaxnet.process.prepare``'s allocator setting: freed memory stays in the process.

XLA frees and allocates a step's large buffers every step; with glibc's defaults each comes
back from the kernel as fresh pages, faulted in again (docs/xla-cpu-conv.md). A fresh process
per case: glibc's settings are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxnet import process

CYCLES = 10
# Each cycle allocates and fills 64 MB and frees it. A page fault maps at most one 2 MB page
# (a transparent huge page; 4 KB otherwise), so a buffer faulted in afresh costs at least 32.
AT_LEAST_PER_CYCLE = (64 << 20) // (2 << 20)
SCRIPT = f"""
import resource
from jaxnet import process
print(process.prepare() == [] and process.keep_freed_memory())
print(process.allocator())
import numpy as np
a = np.empty(8 << 20); a.fill(1.0); del a  # 64 MB, the first time
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({CYCLES}):
    a = np.empty(8 << 20); a.fill(1.0); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _faults(**env: str) -> tuple[str, str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "JAXNET_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=clean | env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    took, setting, faults = out.stdout.splitlines()
    return took, setting, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_kept_unless_the_user_chose_otherwise():
    took, setting, kept = _faults()
    assert took == "True" and kept < AT_LEAST_PER_CYCLE  # no cycle faulted its buffer in again
    assert setting == "freed memory kept in the process (jaxnet.process.MALLOC)"
    said = {
        "JAXNET_MALLOC": "glibc's defaults",
        "MALLOC_ARENA_MAX": "`MALLOC_ARENA_MAX=2` (the environment's)",
    }
    for choice in ({"JAXNET_MALLOC": "0"}, {"MALLOC_ARENA_MAX": "2"}):  # the user's choice stands
        took, setting, faults = _faults(**choice)
        assert took == "False" and faults >= CYCLES * AT_LEAST_PER_CYCLE, choice  # every cycle did
        assert setting == said[next(iter(choice))]


def test_the_setting_is_only_tried_where_glibc_has_it(monkeypatch):
    monkeypatch.setattr(process.ctypes, "CDLL", lambda name: object())  # a C library without mallopt
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "JAXNET_MALLOC"]:
        monkeypatch.delenv(key)
    assert process.keep_freed_memory() is False
