"""``make device-check`` on a machine without a GPU: the path that must work the first time.

The accelerator run itself happens once, on a lent machine; what can be checked here is that
the script runs its parts in separate, time-boxed processes, falls back to the CPU with tiny
settings when no CUDA device is visible, records a part's error or time-out and goes on, and
writes its summary files.
"""

from __future__ import annotations

import json
import sys

from jaxnet import devicecheck


def test_without_a_gpu_the_check_runs_on_the_cpu_and_writes_its_files(tmp_path, capsys):
    # one parity part (the others differ only in their arguments) and data-parallel's skip
    code = devicecheck.main(["--out", str(tmp_path), "--parts", "parity-mlp-default,data-parallel"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((tmp_path / "device-check-cpu.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["environment", "parity-mlp-default", "data-parallel"]
    assert summary["device"] == "cpu" and summary["settings"] == "tiny"
    assert "no cuda device" in parts["environment"]["detail"]
    assert parts["parity-mlp-default"]["status"] == "pass"
    assert parts["parity-mlp-default"]["result"]["environment"]["float32 matmul arithmetic in force"] == (
        "jax highest, torch highest"  # CPUs have no TF32: "default" is IEEE float32 there
    )
    assert (
        parts["data-parallel"]["status"] == "skipped" and "no cuda device" in parts["data-parallel"]["detail"]
    )
    assert (
        "| forward | linear_relu_stack.0 | float32 |" in (tmp_path / "parity-mlp-default-cpu.md").read_text()
    )
    assert "| parity-mlp-default | pass |" in (tmp_path / "device-check-cpu.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "device-check-cpu.json",
        "device-check-cpu.md",
        "parity-mlp-default-cpu.md",
    ]
    assert "parity-mlp-default  pass" in out  # the printed summary table


def test_a_part_that_hangs_is_stopped_and_one_that_fails_is_recorded(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}  # as the check sets it
    hang = [sys.executable, "-c", "import time; time.sleep(30)"]
    code, seconds = devicecheck.run_part(hang, 0.5, env, tmp_path / "hang.log")
    assert code is None and seconds < 10
    crash = [sys.executable, "-c", "print('partial output'); raise SystemExit('boom: the part failed')"]
    code, _ = devicecheck.run_part(crash, 30, env, tmp_path / "crash.log")
    assert code == 1
    assert devicecheck._last_line(devicecheck._tail(tmp_path / "crash.log")) == "boom: the part failed"


def test_bad_parts_are_a_one_line_error(tmp_path, capsys):
    assert devicecheck.main(["--out", str(tmp_path), "--parts", "parity-resnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown parity-resnet" in err
