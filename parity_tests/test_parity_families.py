"""``jaxnet parity --model resnet`` and ``--model gpt``: the ported families through the
command line (:mod:`jaxnet.parity.family`), at tiny sizes, in float32 and float64.

Each run is one process-wide set of compiled programs; the sizes only set how long each
runs. The full-size reports are docs/parity-resnet-cpu.md and docs/parity-gpt-cpu.md.
"""

from __future__ import annotations

import json

import pytest

from jaxnet.cli import main
from parity_tests.test_cli import jaxnet

# The calibrator's sizes (jaxnet.parity.calibrate). Smaller ones reach the floors' limits: at
# channels 2,4,4 on 4 images, JAX's float32 sums of BatchNorm statistics over 784 elements (torch
# sums them in double, so no floor sees that error) and the last BatchNorms' bias gradients
# (a cancelling sum) land 1.0-1.4 times their bounds.
RESNET = ["--model", "resnet", "--size", "channels=4,8,8", "blocks=1", "--examples", "16"]
GPT = ["--model", "gpt", "--size", "block_size=16", "n_layer=1", "n_head=2", "n_embd=16", "dropout=0",
       "--examples", "8"]  # fmt: skip


# One dtype each: nearly all of a run's CPU is compiling, once per dtype (a ResNet report in both
# dtypes costs about a minute of CPU). The engine's own tests hold a BatchNorm model and a
# transformer block in both dtypes (test_port_engine); these hold the families' command line.
@pytest.mark.parametrize(
    ("family", "dtype"),
    [(RESNET, "float64"), ([*RESNET, "--seed", "1"], "float32"), (GPT, "float32")],
    ids=["resnet-float64", "resnet-seed1-float32", "gpt-float32"],
)
def test_a_family_report_passes(family, dtype, tmp_path, capsys):
    """A correct port passes every row: forward, gradient, probes, teacher-forced steps, the
    free-running trajectory and outcomes, each within K of its measured floor.

    Seed 1 in float32 holds the outcome rows after a tie: measured on an AVX2 EPYC, the two
    frameworks decide a ReLU tie after ``layer3.0.bn1`` differently at step 1; BatchNorm spreads
    the flip over the whole batch, and torch's reversed-order and float64 runs (which did not
    cross it) put the loss 26 times its bound from jax's without the run that did: torch
    continued from jax's state after that step. Where another CPU's rounding takes no such
    tie, the run stays within its bounds and the same assertions hold."""
    out = jaxnet(capsys, "parity", *family, "--dtype", dtype, "--steps", "2", "--json", tmp_path / "r.json")
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    kinds = {r["section"].split(" ")[0] for r in rows}
    assert {"forward", "gradient", "probe", "step", "trajectory"} <= kinds, kinds
    assert {r["dtype"] for r in rows} == {dtype}
    assert all(r["passed"] for r in rows) and "FAIL" not in out
    diverged = any(r["section"].startswith("trajectory") and "rose above" in r["note"] for r in rows)
    crossed = [
        r for r in rows if r["section"].startswith("outcome") and "torch from jax's state" in r["note"]
    ]
    assert bool(crossed) == (diverged and "outcome" in kinds), (diverged, kinds)


def test_a_port_slip_in_the_resnet_fails_its_report(monkeypatch, tmp_path, capsys):
    """The port's BatchNorms at nnx.BatchNorm's default momentum (0.99: torch's 0.01, not its
    0.1), nothing else changed, fail first at a running mean after one train-mode forward.

    float32, the dtype one trains in: the slip moves each running mean by 0.09 of its batch
    mean, orders of magnitude above any float32 floor, and the eval-mode programs are the ones
    seed 1's float32 report compiled (a float64 run compiles its own: ~3 CPU-s more)."""
    from jaxnet.models import resnet
    from jaxnet.nn import TorchBatchNorm

    def slipped(channels, dtype, rngs):
        return TorchBatchNorm(channels, momentum=0.99, param_dtype=dtype, rngs=rngs)

    monkeypatch.setattr(resnet, "batch_norm", slipped)
    out_json = tmp_path / "r.json"
    code = main(["parity", *RESNET, "--dtype", "float32", "--optimizer", "none", "--json", str(out_json)])
    capsys.readouterr()
    assert code == 1
    first = next(r for r in json.loads(out_json.read_text())["rows"] if not r["passed"])
    assert first["quantity"].startswith("running ") and first["quantity"].endswith(".running_mean"), first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet", "--plant", "adam-eps-1e-7"], "which --model resnet never runs"),
        (["--model", "gpt", "--devices", "2"], "--devices is for --model mlp"),
        (["--model", "gpt", "--optimizer", "sgd"], "runs its own recipe"),
        (["--model", "resnet", "--train-limit", "64"], "--train-limit is for the MLP and the CNN"),
        (["--model", "mlp", "--examples", "4"], "--examples is for --model resnet and gpt"),
        (["--model", "resnet", "--size", "depth=3"], "expected FIELD=VALUE"),
    ],
)
def test_bad_family_parity_input_is_one_line(args, message, capsys):
    """A flag of the other engine, a fault the family never runs, an unknown size: one line."""
    try:
        code = main(["parity", *args])
    except SystemExit as stop:  # argparse's usage line and error
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
