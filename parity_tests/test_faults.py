"""Planted porting bugs (:mod:`jaxnet.parity.faults`): each fails the float32 rows alone,
named by its first failing row, and leaves nothing behind once removed.
"""

from __future__ import annotations

import pytest

from jaxnet import parity
from jaxnet.cli import main
from jaxnet.parity import faults
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


@pytest.mark.parametrize("name", list(EXPECTED_FIRST_FAILURE))
def test_each_planted_fault_fails_the_float32_rows_alone(fmnist, name):
    with faults.planted(name) as fault:
        report = parity.run(fmnist, dtypes=("float32",), steps=3, recipes=fault.recipes, epoch_recipe=None)
    first = report.first_failure()
    assert first is not None, f"{name} went unnoticed"
    section, quantity = EXPECTED_FIRST_FAILURE[name]
    assert first.section.startswith(section) and first.quantity.startswith(quantity), (
        first.section,
        first.quantity,
    )
    assert first.ratio > 1 and first.dtype == "float32"


def test_a_planted_fault_fails_the_free_running_row_too(fmnist):
    """The free-running pair diverges at once; no tie or near-zero gradient may excuse it while
    the teacher-forced steps themselves fail."""
    with faults.planted("decay-after-momentum"):
        report = parity.run(
            fmnist, dtypes=("float32",), steps=4, recipes=("sgd-nesterov-wd-step",), epoch_recipe=None
        )
    [trajectory] = [r for r in report.rows if r.section.startswith("trajectory")]
    assert not trajectory.passed and "failed on their own" in trajectory.note, trajectory.note


def test_the_planted_fault_is_gone_afterwards(fmnist):
    with faults.planted("adam-eps-1e-7"):
        pass
    report = parity.run(fmnist, dtypes=("float32",), steps=2, recipes=("adam-l2",), epoch_recipe=None)
    assert report.passed, problems(report)


def test_the_command_fails_on_a_planted_fault(capsys):
    assert main(["parity", "--dtype", "float32", "--steps", "2", "--optimizer", "adam-l2", "--epoch-optimizer",
                 "none", "--plant", "adam-eps-1e-7"]) == 1  # fmt: skip
    assert "first failure: step (2, teacher-forced) / adam-l2: " in capsys.readouterr().out
