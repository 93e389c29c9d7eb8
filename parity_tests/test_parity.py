"""``jaxnet parity``: verdicts that hold on any CPU and catch every planted fault.

No false alarms: a correct JAX side passes under three arithmetic orders (as built, every
gradient reduction reversed, torch on MKL's generic kernels with two threads everywhere).
No blind spots: each fault of :mod:`jaxnet.parity.faults` fails the float32 rows alone,
named by its first failing row (``test_faults.py``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jaxnet import data, parity
from jaxnet.cli import main
from jaxnet.config import RECIPES, ModelConfig
from jaxnet.errors import JaxnetError
from jaxnet.numerics import UNIT_ROUNDOFF, error
from jaxnet.parity import pool, verdict
from jaxnet.parity.environment import matmul_precision
from jaxnet.parity.report import text_table as report_text_table
from parity_tests.conftest import problems, threaded

QUICK = {"steps": 1, "epoch_recipe": "sgd", "train_limit": 352}  # an epoch of 5 steps and a short one
TEST_IMAGES = 2000  # the epoch's outcomes on the first 2000 test images, not all 10000
# The in-process reports judge the tutorial's MLP at widths 64, 64 (its layers, ReLUs and names;
# 56k parameters, not 670k): every floor is measured on the run it bounds, so a correct port
# passes at any width, and the engine's per-element work (errors, floors, copies between the
# frameworks) scales with the parameters: 21 -> 12 CPU-s for the two reports. The tutorial's
# own widths run in the two command runs below (the MKL-generic one and --json/--markdown).
CONFIG = ModelConfig(hidden=(64, 64))


@pytest.fixture(scope="module")
def small(fmnist) -> SimpleNamespace:
    """The real data the runs here read: the training examples the quick epoch reaches (the
    same 352, in the same order) and a fifth of the test split. The epoch's outcome rows judge
    jax against torch on the same images however many there are, each bound from torch's own
    spread on them; predicting 10000 images six times was a fifth of this file's CPU. The
    outcome rows at the full 10000 (a count bound of 16 in 10000, not in 2000) are held by the
    saved full reports (docs/parity-cpu*.json, ``jaxnet parity`` regenerates them), not here."""
    train, test = fmnist.train, fmnist.test
    return SimpleNamespace(
        train=data.Split(train.images[: QUICK["train_limit"]], train.labels[: QUICK["train_limit"]]),
        test=data.Split(test.images[:TEST_IMAGES], test.labels[:TEST_IMAGES]),
    )


@pytest.fixture(scope="module")
def quick_report(small) -> parity.Report:
    return parity.run(small, config=CONFIG, **QUICK)


def test_a_correct_port_passes_every_row(quick_report):
    assert quick_report.passed, problems(quick_report)
    sections = {r.section.split(" ")[0] for r in quick_report.rows}
    assert sections == {"forward", "gradient", "probe", "step", "trajectory", "epoch"}
    steps = {(r.quantity.split(":")[0], r.dtype) for r in quick_report.rows if r.section.startswith("step")}
    assert steps == {(name, d) for name in RECIPES for d in ("float32", "float64")}
    assert quick_report.environment["float32 matmul arithmetic in force"] == "jax highest, torch highest"


def test_every_row_shows_floor_bound_and_ratio_consistently(quick_report):
    for row in quick_report.rows:
        assert row.passed == (row.err <= row.bound), row  # never "pass" beside an error above the bound
        if row.bound not in (0.0, np.inf):
            assert row.ratio == pytest.approx(row.err / row.bound)
        if row.error is not None and row.section in ("forward", "gradient"):
            assert row.floor >= UNIT_ROUNDOFF[row.dtype]  # no floor finer than the dtype resolves


def test_same_verdicts_with_every_reduction_reversed(small, quick_report):
    """Each batch's examples reversed: every gradient sum and the loss mean in another order.
    (After the quick report: the step programs it compiled serve these steps too.)"""
    report = parity.run(small, config=CONFIG, reverse_batches=True, steps=3, epoch_recipe=None)
    assert report.passed, problems(report)


def test_worker_processes_compute_the_rows_this_process_does(small, quick_report):
    """Sections run by two spawned workers (each its own imports, backends and compiles, at the
    suite's one thread) give the serial report's rows to the bit: the same errors, floors, notes
    and order, with the forward rows computed here meanwhile. The epoch's recipe alone keeps it
    short (four sections: its steps, the epoch's sample, each dtype's epoch): every recipe's
    steps start from the same weights, so its rows are the serial report's rows of that recipe."""
    report = parity.run(small, config=CONFIG, **QUICK | {"workers": 2}, recipes=("sgd",))
    assert report.environment["processes"].startswith("step and epoch sections in 2 worker processes")
    kept = [r for r in quick_report.rows if not r.section.startswith(("step", "trajectory"))
            or r.quantity.split(":")[0] == "sgd"]  # fmt: skip
    assert [repr(r) for r in report.rows] == [repr(r) for r in kept]  # repr: every float to the bit
    assert report.histories == {k: v for k, v in quick_report.histories.items() if k.endswith(" sgd")}


def test_workers_start_where_they_pay_each_with_its_share_of_the_cores(monkeypatch):
    default = [100] * 4 + [938, 938]  # the MLP report's sections: four recipes, two dtypes' epochs
    assert pool.auto(default, on_cpu=True, available=2) == 2
    assert pool.auto(default, on_cpu=True, available=64) == 6  # at most one per section
    assert pool.auto(default, on_cpu=False, available=64) == 1  # an accelerator: one process
    assert pool.auto([2] * 4, on_cpu=True, available=64) == 1  # too short to pay for a worker
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert pool.cores() == 2  # the affinity mask, not every core of the machine
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    two = pool.worker_env(2, available=2)
    assert two["OMP_NUM_THREADS"] == two["MKL_NUM_THREADS"] == "1"
    assert two["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    assert two["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # no accelerator memory claimed up front
    assert pool.worker_env(2, available=8)["OMP_NUM_THREADS"] == "4"
    assert "XLA_FLAGS" not in pool.worker_env(2, available=8)  # XLA's pool stays on
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert "OMP_NUM_THREADS" not in pool.worker_env(2, available=8)  # the user's choice stands


def test_a_worker_that_cannot_start_raises_the_cause_from_each_section(small, monkeypatch):
    """Run here as a worker runs it: a session that fails (weights with a wrong key) is kept
    and raised by every section, not lost in a broken pool."""
    monkeypatch.setattr(pool, "_FAILED", None)
    options = {"config": CONFIG, "dtypes": ("float32",)}
    pool._open({}, pool.Start(options, {"no.such.weight": np.zeros(1, np.float32)}, small.train, small.test))
    for _ in range(2):  # every section, not only the first
        with pytest.raises(
            JaxnetError, match=re.escape("missing key 'linear_relu_stack.0.weight'")
        ) as raised:
            pool._call(lambda context: context)
    assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)  # it reaches the parent whole


def test_a_start_error_reaches_the_parent_with_its_cause():
    class TwoArgs(Exception):  # local, and not rebuilt from its one message: it cannot travel
        def __init__(self, a, b):
            super().__init__(f"{a} and {b}")

    odd = pool._portable(TwoArgs("torch", "jax"))
    assert (
        isinstance(odd, JaxnetError) and str(odd) == "a parity worker could not start: TwoArgs: torch and jax"
    )
    plain = pool._portable(ValueError("bad"))  # travels, with the worker's traceback beside it
    assert isinstance(plain, ValueError) and plain.__notes__[0].startswith("in a parity worker's start:")


def test_same_verdicts_on_mkl_generic_kernels_and_two_threads(tmp_path):
    """torch on MKL's generic (SSE) kernels, two threads for torch, MKL and XLA's Eigen (the
    suite's own processes run one: conftest), XLA optimising as users run it: another CPU's
    rounding, in a fresh process because the libraries read these settings when they load."""
    env = threaded({**os.environ, "MKL_CBWR": "COMPATIBLE", "XLA_FLAGS": "",
                    "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"})  # XLA optimising, as users run it (conftest)  # fmt: skip
    out = tmp_path / "report.json"
    # Two steps of the recipe with momentum, decay and a schedule; Adam's run in-process above.
    cmd = [sys.executable, "-m", "jaxnet", "parity", "--steps", "2", "--optimizer", "sgd-nesterov-wd-step"]
    cmd += ["--epoch-optimizer", "none", "--json", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: a row failed; else it crashed
    report = json.loads(out.read_text())
    assert result.returncode == 0 and report["passed"], [r for r in report["rows"] if not r["passed"]]
    assert "2 threads" in report["environment"]["torch device"]


# ---------------------------------------------------------------------------- verdict pieces


def test_the_ladder_scales_the_float32_floor_by_unit_roundoff():
    assert verdict.ladder_factor("float32") == 1.0
    assert verdict.ladder_factor("float64") == 2.0**-29
    assert verdict.ladder_factor("float32", matmul="tf32") == 2.0**13  # u_tf32 / u_32
    ref32, ref64 = np.float32([1.0, 2.0 + 2**-22]), np.float64([1.0, 2.0])
    assert verdict.ladder_floor(ref32, ref64, "float32", 1.0) == 2**-23
    assert verdict.ladder_floor(ref32, ref64, "float64", 2.0**-29) == 2**-52
    assert verdict.ladder_floor(ref64, ref64, "float64", 1.0) == 2.0**-53  # never below one u


def test_ulps_are_counted_in_the_rows_dtype():
    one_float32_ulp_at_2 = np.float64(np.float32(2.0) + np.spacing(np.float32(2.0)))
    assert error(np.float64([1.0, one_float32_ulp_at_2]), np.float64([1.0, 2.0]), "float32").ulps == 1.0
    assert error(np.float64([1.0, one_float32_ulp_at_2]), np.float64([1.0, 2.0])).ulps == 2.0**29


def test_the_text_table_keeps_each_row_on_one_line_in_aligned_columns():
    long_note = "a note longer than any terminal is wide; " * 8
    rows = [
        parity.Row("forward", "linear_relu_stack.0", "float32", 1e-7, 1e-8, 1.6e-7, True),
        parity.Row("step sgd", "linear_relu_stack.4.bias: step 3", "float64", 5.0, 1e-16, 1.6e-15, False, note=long_note),
        parity.Row("epoch sgd", "test accuracy", "float32", 0, 1, 16, True),
    ]  # fmt: skip
    head, rule, *lines = report_text_table(parity.Report(rows, {}))
    assert len(lines) == 3 and lines[1].split()[:2] == ["step", "sgd"] and long_note.strip() in lines[1]
    ok = head.index(" ok") + 1  # every line's verdict sits under the header's "ok"
    assert [line[ok : ok + 4] for line in lines] == ["pass", "FAIL", "pass"]
    assert len(rule.split()) == 13  # a dash run per column
    assert head.split()[:3] == ["section", "quantity", "dtype"]


def test_the_printed_table_is_a_line_per_row_whatever_the_notes_hold(capsys):
    """Off a terminal (250 columns): a note far wider than that, rich markup in a quantity and a
    newline in a note stay on their row's line and print as written; the summary line follows."""
    rows = [
        parity.Row("forward", "conv1", "float32", 1e-7, 1e-8, 1.6e-7, True, note="x" * 400),
        parity.Row("step sgd", "w[bold]: step 1", "float32", 5.0, 1e-8, 1.6e-7, False, note="[1, 8, 16]\nnext"),
    ]  # fmt: skip
    parity.print_table(parity.Report(rows, {"machine": "[red]cpu"}))
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("section  "))
    first, second, summary = lines[start + 2 : start + 5]
    assert first.startswith("forward") and first.endswith("x" * 400)
    assert (
        second.startswith("step sgd") and "w[bold]: step 1" in second and second.endswith("[1, 8, 16] next")
    )
    assert "FAIL" in second.split() and summary.startswith("1/2 rows within their bounds")
    assert any("[red]cpu" in line for line in lines[:start])  # the environment's values as written


def test_an_elementwise_row_fails_at_the_element_beyond_its_own_bound():
    expected = np.array([1.0, 1e-6, 0.5])
    floor = np.array([1e-7, 1e-12, 1e-7])
    ok = expected + np.array([15e-7, 15e-12, -15e-7]) * verdict.K / 16  # each within K times its own floor
    assert verdict.elementwise("step", "p", "float32", ok, expected, floor).passed
    bad = expected + np.array([0.0, 1.1 * verdict.K * 1e-12, 0.0])  # tiny, but above K x its element's floor
    row = verdict.elementwise("step", "p", "float32", bad, expected, floor)
    assert not row.passed and "[1]" in row.note and row.err > row.bound


def test_relu_ties_are_flips_near_zero_on_both_sides():
    pre_b = np.array([[1.0, -1e-9, 0.5, -0.3]])
    pre_a = np.array([[1.0, 2e-9, -0.5, -0.3]])  # flips at 1 (near 0) and 2 (far from 0)
    flips, at_tie = verdict.relu_ties(pre_a, pre_b, within=1e-8)
    assert flips.tolist() == [[0, 1], [0, 2]] and at_tie.tolist() == [True, False]
    assert not verdict.relu_ties(np.array([[1.0, 0.4]]), np.array([[1.0, -1e-9]]), within=1e-8)[1][
        0
    ]  # one side far


def test_a_step_floor_is_resolution_plus_measured_error_plus_gradient_sensitivity():
    before, after32, after64 = (
        np.array([1.0, 1e-3]),
        np.array([1.0 - 2**-20, 2e-3]),
        np.array([1.0 - 2**-20, 2e-3]),
    )
    moved = [after64 + np.array([0.0, 1e-9]), after64 - np.array([0.0, 3e-9])]
    floor = verdict.step_floor(before, after32, after64, moved, "float32", 1.0)
    resolution = np.spacing(np.float32([1.0, 2e-3])).astype(float) + np.spacing(np.float32([2**-20, 1e-3]))
    assert np.allclose(floor, resolution + np.array([0.0, 3e-9]), rtol=1e-6, atol=0)  # 2e-3 + 3e-9 rounds
    floor64 = verdict.step_floor(before, after32, after64, moved, "float64", 2.0**-29)
    assert floor64[1] < 1e-16 + 3e-9 * 2.0**-29


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf, planted
def test_chunked_step_ratios_are_the_whole_array_ones_element_for_element(monkeypatch):
    """:func:`verdict.step_ratios` (chunked, every dtype at once) against :func:`verdict.step_floor`
    and :func:`verdict.worst_ratio` over whole arrays: the same floors to the bit and the same
    worst ratio (NaN where theirs is NaN), with the worst element inside a middle chunk, NaN and
    inf results, an inf in the reference (NaN floors), subnormals, a 0-d tensor and a broadcast
    ``before``. A chunk of 7 splits 5x11 elements into eight pieces."""
    monkeypatch.setattr(verdict, "CHUNK", 7)
    rng = np.random.default_rng(0)
    before = rng.standard_normal((5, 11)).astype(np.float32)
    after64 = before + 1e-3 * rng.standard_normal((5, 11))
    after64[0, :3] = [1e-310, 0.0, -2e-320]  # subnormal float64 (and float32: 0)
    after32 = after64.astype(np.float32)
    moved = [after64 * (1 + 1e-9), after64 * (1 - 2e-9)]
    finite32 = after32 + np.float32(1e-7) * rng.standard_normal((5, 11)).astype(np.float32)
    finite32[2, 8] += np.float32(1e-4)  # element 30: the fifth chunk's, the worst by far
    finite64 = after64 + 1e-15 * rng.standard_normal((5, 11))
    finite64[1, 9] += 1e-12  # element 20: the third chunk's
    broken32 = finite32.copy()
    broken32[2, 5], broken32[4, 10] = np.nan, np.inf
    inf64 = after64.copy()
    inf64[3, 3] = np.inf  # a non-finite reference: NaN floors there

    def same(a: float, b: float) -> bool:
        return a == b or (np.isnan(a) and np.isnan(b))

    cases = [
        (before, after32, after64, moved, finite32, finite64),
        (before, after32, after64, moved, broken32, finite64),
        (before, after32, inf64, [inf64, inf64], finite32, inf64),
        (np.float32(0.5), after32, after64, moved, finite32, finite64),  # broadcast: the whole-array way
        (
            np.float32(2.0),
            np.float32(2.0),
            np.float64(2.0),
            [np.float64(2.0)] * 2,
            np.float32(2.5),
            2.0 + 1e-15,
        ),
    ]
    for b, a32, a64, m, v32, v64 in cases:
        sides = [(v32, a32, "float32", 1.0, 1e-9), (v64, a64, "float64", 2.0**-29, 1e-17)]
        found = verdict.step_ratios(b, a32, a64, m, sides)
        for (ratio, floor), (v, e, dtype, factor, extra) in zip(found, sides, strict=True):
            whole = verdict.step_floor(b, a32, a64, m, dtype, factor) + extra
            np.testing.assert_array_equal(floor, whole)
            assert same(ratio, verdict.worst_ratio(v, e, whole)), (dtype, ratio)
    # the planted differences decide the finite case's ratios, far above a correct step's
    (r32, _), (r64, _) = verdict.step_ratios(before, after32, after64, moved, [
        (finite32, after32, "float32", 1.0, 0.0), (finite64, after64, "float64", 2.0**-29, 0.0)])  # fmt: skip
    assert r32 > 1 and r64 > 1
    [(ratio, _)] = verdict.step_ratios(
        before, after32, after64, moved, [(broken32, after32, "float32", 1.0, 0.0)]
    )
    assert ratio == np.inf  # the NaN and the inf fail, whichever chunk they sit in


def _pair(gaps, bounds, events=()):
    from jaxnet.parity.free import Event, FreePair

    pair = FreePair(None, None, [])
    pair.gaps, pair.bounds, pair.events = list(gaps), list(bounds), [Event(*e) for e in events]
    return pair


def test_a_trajectory_row_passes_within_its_bound_or_after_an_explained_event_only():
    assert _pair([1e-7, 2e-7], [1e-6, 2e-6]).row("t", "q", "float32").passed
    unexplained = _pair([1e-7, 5e-6], [1e-6, 2e-6]).row("t", "q", "float32")
    assert (
        not unexplained.passed and "unexplained" in unexplained.note and unexplained.err > unexplained.bound
    )
    explained = _pair([1e-7, 5e-6], [1e-6, 2e-6], [(2, "ReLU tie", "ReLU tie at step 2: ...")])
    assert explained.row("t", "q", "float32").passed
    assert not explained.row("t", "q", "float32", forced=[0.5, 3.0]).passed  # the step itself failed
    assert not _pair([1e-7, np.nan], [1e-6, 2e-6]).row("t", "q", "float32").passed


def test_precision_switches_restore_what_they_change():
    import torch

    before = (str(jax.config.jax_default_matmul_precision), torch.get_float32_matmul_precision())
    with matmul_precision("highest", "cpu") as arithmetic:
        assert arithmetic.coarsest == "highest"
        assert str(jax.config.jax_default_matmul_precision) == "highest"
        assert torch.get_float32_matmul_precision() == "highest"
    assert (str(jax.config.jax_default_matmul_precision), torch.get_float32_matmul_precision()) == before


# ---------------------------------------------------------------------------- command line


def test_the_command_writes_json_markdown_and_a_plot(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["parity", "--dtype", "float32", "--steps", "2", "--optimizer", "adam-l2", "--epoch-optimizer", "none",
            "--json", f"{out}.json", "--markdown", f"{out}.md", "--plot", f"{out}.png"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rows within their bounds" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    # the printed table: one line per row, in the report's order, its cells in the columns' order
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("section  "))
    body = lines[start + 2 : start + 2 + len(report["rows"])]
    for line, row in zip(body, report["rows"], strict=True):
        cells = line.split()
        assert cells[0] == row["section"].split()[0] and row["quantity"] in line and "pass" in cells, line
    assert (
        lines[start + 1].startswith("-------") and "rows within their bounds" in lines[start + 2 + len(body)]
    )
    assert report["passed"] and {row["dtype"] for row in report["rows"]} == {"float32"}
    assert {row["section"].split(" ")[0] for row in report["rows"]} == {
        "forward",
        "gradient",
        "probe",
        "step",
        "trajectory",
    }
    assert "| forward | linear_relu_stack.0 | float32 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "default"])
def test_gpu_parity_in_both_matmul_precisions(fmnist, precision):
    import torch

    if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("needs a CUDA device visible to both torch and jax")
    report = parity.run(fmnist, steps=10, device="cuda", matmul_precision=precision, epoch_recipe=None)
    assert report.passed, problems(report)
    arithmetic = report.environment["float32 matmul arithmetic in force"]
    if precision == "highest":
        assert arithmetic == "jax highest, torch highest"
    else:  # JAX's default float32 matmuls on recent NVIDIA GPUs are TF32; the floors scale to it
        assert "tf32" in arithmetic


def test_a_lazy_search_for_causes_finds_what_the_step_by_step_one_does(fmnist):
    """A free-running pair on CPU looks for ties and near-zero gradients only once its gap leaves
    the bound, by replaying both sides from the start: the same events, gaps and crossing as the
    search at every step, and both sides put back where they were (the run goes on bit for bit).

    The sides step at different learning rates, so that their updates differ (near-zero gradients
    under a noise floor of 1) and pre-activations flip; step 5's allowance is negative, a first
    excess there on any CPU; step 6's brings the bound back over the gap (searched again, as the
    eager search does), step 7's under it again."""
    from dataclasses import replace

    from jaxnet import checkpoint
    from jaxnet.backends import get_backend
    from jaxnet.config import ModelConfig
    from jaxnet.parity.free import FreePair

    config = ModelConfig(hidden=(32,))
    state = checkpoint.init_state_dict(config, 0)
    x, y = fmnist.train[:256].float_images(), fmnist.train.labels[:256]
    opt = RECIPES["adam-l2"]
    runs = {}
    for lazy in (True, False):
        sides = []
        for name, lr in (("jax", opt.lr), ("torch", 1.5 * opt.lr)):
            backend = get_backend(name, config, state=state)
            backend.train_dropout = False
            backend.set_optimizer(replace(opt, lr=lr))
            backend.set_train_data(x, y)
            sides.append(backend)
        data = (lambda idx: (x[idx], y[idx])) if lazy else None
        pair = FreePair(*sides, list(config.relu_inputs), eps=opt.eps, data=data)
        assert pair.lazy == lazy
        for t in range(1, 9):
            idx = np.arange(32 * (t - 1), 32 * t)
            pair.before(x[idx], y[idx])
            pair.step(idx)
            pair.after(t, {5: -10.0, 6: 100.0, 7: -200.0}.get(t, 1.0), {k: 1.0 for k in state})
        final = [{k: v.tobytes() for k, v in (s.state_dict() | s.optimizer_state()).items()} for s in sides]
        runs[lazy] = (
            [(e.step, e.kind, e.text) for e in pair.events],
            pair.gaps,
            pair.bounds,
            pair.crossed,
            final,
        )
    (events, gaps, bounds, crossed, final), eager = runs[True], runs[False]
    assert events and events == eager[0], (events, eager[0])
    assert gaps == eager[1] and bounds == eager[2] and final == eager[4]
    assert crossed[0] == eager[3][0] == 5
    assert gaps[5] <= bounds[5] and gaps[6] > bounds[6]  # back under at step 6, over again at 7
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(crossed[1:], eager[3][1:], strict=True) for k in a)


def test_a_side_that_does_not_reload_its_own_state_fails_its_row_not_the_run(fmnist, monkeypatch):
    """A lazy pair replays from a saved start; where the JAX side's loader does not restore what
    its ``state_dict()`` saved (here it moves a bias by 1e-3, as a port whose weights cross the
    layouts wrongly would), the replay cannot end where the run did: the trajectory row fails
    and says why, and the report goes on (it raised a RuntimeError)."""
    from jaxnet import checkpoint
    from jaxnet.backends import get_backend
    from jaxnet.backends.jax import JaxBackend
    from jaxnet.config import ModelConfig
    from jaxnet.parity.free import FreePair

    config = ModelConfig(hidden=(32,))
    state = checkpoint.init_state_dict(config, 0)
    x, y = fmnist.train[:64].float_images(), fmnist.train.labels[:64]
    sides = []
    for name in ("jax", "torch"):
        backend = get_backend(name, config, state=state)
        backend.set_optimizer(RECIPES["sgd"])
        backend.set_train_data(x, y)
        sides.append(backend)
    load = JaxBackend.load_state_dict
    moved = lambda self, s: load(self, {k: v + 1e-3 if k.endswith("0.bias") else v for k, v in s.items()})  # noqa: E731
    monkeypatch.setattr(JaxBackend, "load_state_dict", moved)
    pair = FreePair(*sides, list(config.relu_inputs), data=lambda idx: (x[idx], y[idx]))
    for t in (1, 2):
        idx = np.arange(32 * (t - 1), 32 * t)
        pair.before(x[idx], y[idx])
        pair.step(idx)
        pair.after(t, {1: 1.0, 2: -1.0}[t], {k: 1.0 for k in state})  # over its bound at step 2
    row = pair.row("trajectory", "sgd", "float32")
    assert not row.passed and "the jax side did not end where the run did" in row.note, row.note
