"""Planted porting bugs (:mod:`jaxnet.parity.faults`): each fails the float32 rows alone,
named by its first failing row, and leaves nothing behind once removed.
"""

from __future__ import annotations

import json
import re

import pytest

from jaxnet import parity
from jaxnet.cli import main
from jaxnet.cli.parity import plant_recipes
from jaxnet.config import ALL_RECIPES
from jaxnet.errors import JaxnetError
from jaxnet.parity import faults
from jaxnet.parity.builtin import MODELS
from jaxnet.parity.report import summary
from parity_tests.conftest import problems

EXPECTED_FIRST_FAILURE = {
    "transposed-weight": ("forward", "linear_relu_stack.2"),
    "relu-grad-at-0": ("probe", "relu'(0): grad linear_relu_stack.0.bias"),
    "log-of-softmax": ("probe", "loss at extreme logits (x10000)"),
    "sum-loss": ("forward", "loss"),
    "decay-after-momentum": ("step", "sgd-nesterov-wd-step: "),
    "nesterov-dropped": ("step", "sgd-nesterov-wd-step: "),
    "adam-eps-in-sqrt": ("step", "adam-l2: "),
    "adam-eps-1e-7": ("step", "adam-l2: "),
    "adam-bias-correction-off-by-one": ("step", "adam-l2: "),
    "cosine-one-step-off": ("step", "adamw-cosine: "),
    "adamw-decay-not-scaled-by-lr": ("step", "adamw-cosine: "),
    "adadelta-eps-outside-sqrt": ("step", "adadelta-step: "),  # on the MLP: its steps are the cheaper
}


def test_the_fault_catalogue_is_covered():
    assert set(EXPECTED_FIRST_FAILURE) == set(faults.FAULTS)


# The one fault whose run prints the command's whole table. The others print only its last line
# (report.summary, what the table ends with): rendering the ~40-row rich table cost 1.1 of a
# run's ~2.5 CPU-s, and the table's other rows are not what these tests read.
TABLE_FAULT = "decay-after-momentum"


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory):
    """``jaxnet parity --plant NAME`` -> (its exit status, stdout, its ``--json`` report), each run
    once per module: the free-running test reads the rows of the run the command test made."""
    runs: dict[str, tuple[int, str, dict]] = {}

    def run(name: str, capsys) -> tuple[int, str, dict]:
        if name not in runs:
            fault = faults.FAULTS[name]
            recipe = [] if fault.recipes else ["--optimizer", "none"]
            report = tmp_path_factory.mktemp("report") / "report.json"
            # 2 steps: decay-after-momentum, the latest to show, differs from step 2 on
            argv = [
                "parity",
                "--dtype",
                "float32",
                "--steps",
                "2",
                "--epoch-optimizer",
                "none",
                "--plant",
                name,
            ]
            with pytest.MonkeyPatch.context() as patch:
                if name != TABLE_FAULT:
                    patch.setattr(parity, "print_table", lambda report: print(summary(report)))
                code = main([*argv, *recipe, "--json", str(report)])
            runs[name] = (code, capsys.readouterr().out, json.loads(report.read_text()))
        return runs[name]

    return run


@pytest.mark.parametrize("name", list(EXPECTED_FIRST_FAILURE))
def test_each_planted_fault_fails_the_float32_rows_alone_through_the_command(planted_runs, capsys, name):
    """``jaxnet parity --plant NAME`` with the default ``--optimizer all``: the command picks the
    fault's own recipes, so the fault runs and fails its row. A fault of the forward pass or the
    loss needs no recipe (``--optimizer none`` keeps its run short)."""
    code, out, _ = planted_runs(name, capsys)
    assert code == 1, f"{name} went unnoticed"
    first = re.search(r"first failure: (.+?) / (.+) \((\w+), ([^x]+)x its bound\)", out)
    assert first is not None, f"{name}: no failing row"
    section, quantity = EXPECTED_FIRST_FAILURE[name]
    assert first[1].startswith(section) and first[2].startswith(quantity), (first[1], first[2])
    assert float(first[4]) > 1 and first[3] == "float32"
    assert ("jaxnet parity: jax against torch" in out) == (name == TABLE_FAULT)  # the whole table, once


@pytest.mark.parametrize("name", list(EXPECTED_FIRST_FAILURE))
def test_the_command_runs_each_faults_own_recipes_or_refuses(name):
    """What ``--plant`` makes of ``--model`` and ``--optimizer``: never a run that skips the fault."""
    fault = faults.FAULTS[name]
    own = ",".join(fault.recipes)
    assert plant_recipes(name, "mlp", "all", faults.FAULTS) == (own or "all")
    for recipe in (*ALL_RECIPES, "none"):
        if not fault.recipes or recipe in fault.recipes:
            assert plant_recipes(name, "mlp", recipe, faults.FAULTS) == recipe
        else:
            with pytest.raises(JaxnetError, match=rf"bites only in the .*--optimizer {recipe} does not run"):
                plant_recipes(name, "mlp", recipe, faults.FAULTS)
    for model in set(MODELS) - set(fault.models):
        with pytest.raises(JaxnetError, match=rf"--model {model} never runs"):
            plant_recipes(name, model, "all", faults.FAULTS)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (
            ["--plant", "adadelta-eps-outside-sqrt", "--optimizer", "adam-l2"],
            "bites only in the adadelta-step",
        ),
        (["--plant", "sum-loss", "--model", "cnn"], "which --model cnn never runs"),
    ],
)
def test_a_run_that_would_skip_the_fault_is_refused_in_one_line(capsys, argv, reason):
    assert main(["parity", *argv]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"jaxnet: error: --plant {argv[1]}: ") and reason in line, line


def test_a_planted_fault_fails_the_free_running_row_too(planted_runs, capsys):
    """The free-running pair diverges at once; no tie or near-zero gradient may excuse it while
    the teacher-forced steps themselves fail (the command's run of the fault, its JSON report)."""
    _, _, report = planted_runs("decay-after-momentum", capsys)
    [trajectory] = [r for r in report["rows"] if r["section"].startswith("trajectory")]
    assert not trajectory["passed"] and "failed on their own" in trajectory["note"], trajectory["note"]


def test_the_planted_fault_is_gone_afterwards(fmnist):
    with faults.planted("adam-eps-1e-7"):
        pass
    report = parity.run(fmnist, dtypes=("float32",), steps=2, recipes=("adam-l2",), epoch_recipe=None)
    assert report.passed, problems(report)
