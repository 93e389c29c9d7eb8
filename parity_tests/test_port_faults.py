"""Every fault ``jaxnet parity`` catches (:mod:`jaxnet.parity.faults`), caught through
``parity.compare`` too, on the small MLP port pair, in float32 alone.

A fault of the shared JAX code (the layout's loading, the optimizer chains, the schedules) is
planted as ``jaxnet parity --plant`` plants it: the port backend runs the same functions. A
fault of the model or the loss is written into the port as a user would write it: the faulty
activation in the NNX module, the faulty loss as the JAX half of a loss pair. Each must fail
and the report's first difference must point where ``jaxnet parity``'s does.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax
import pytest
import torch

from jaxnet import parity
from jaxnet import train as jtrain
from jaxnet.config import ALL_RECIPES
from jaxnet.parity import faults
from parity_tests.port_models import NNXMLP, TorchMLP, blank
from parity_tests.test_faults import EXPECTED_FIRST_FAILURE


@pytest.fixture(scope="module")
def images(crops16):
    return crops16


def torch_loss(outputs, targets):
    return torch.nn.functional.cross_entropy(outputs, targets)


def jax_loss(per_example):
    return lambda outputs, targets: jnp.mean(per_example(outputs, targets))


CORRECT_LOSS = (torch_loss, jax_loss(optax.softmax_cross_entropy_with_integer_labels))


def planted_in_the_port(name: str):
    """``(nnx port, loss)`` with fault ``name`` written into the port; ``None``: a fault of the
    shared code, planted by :func:`faults.planted`."""
    fault = faults.FAULTS[name]
    if fault.attribute == "relu":
        return blank(NNXMLP, act=fault.wrong(jax.nn.relu)), "cross_entropy"
    if fault.attribute == "per_example_loss":
        return blank(NNXMLP), (torch_loss, jax_loss(fault.wrong(jtrain.per_example_loss)))
    if fault.attribute == "mean_loss":
        return blank(NNXMLP), (torch_loss, fault.wrong(jtrain.mean_loss))
    return None


# One fault per mechanism in the suite (loading, activation, loss, loss reduction, an optimizer
# chain, a schedule): the other optimizer faults swap the same function (``make_optimizer``) the
# port backend is shown to run here; JAXNET_ALL_FAULTS=1 runs each (about 60 s more on 2 cores).
SUITE = (
    "transposed-weight",
    "relu-grad-at-0",
    "log-of-softmax",
    "sum-loss",
    "nesterov-dropped",
    "cosine-one-step-off",
)


RUN = list(faults.FAULTS) if os.environ.get("JAXNET_ALL_FAULTS") else list(SUITE)


def test_the_suites_faults_cover_every_mechanism():
    """Each fault left out shares its mechanism with one the suite runs (an optimizer's, by
    ``make_optimizer``), so the choice cannot silently drop a kind of fault."""
    assert set(SUITE) <= set(faults.FAULTS)
    for name in set(faults.FAULTS) - set(SUITE):
        assert faults.FAULTS[name].recipes, f"{name}: not an optimizer fault, so the suite must run it"


@pytest.mark.parametrize("name", RUN)
def test_each_built_in_fault_is_caught_through_compare(name, images):
    fault = faults.FAULTS[name]
    torch.manual_seed(0)
    planted = planted_in_the_port(name)
    # an optimizer's fault: two steps of its own recipe (decay-after-momentum differs from step 2 on)
    options = dict(dtypes=("float32",), steps=0)
    if fault.recipes:
        options |= dict(steps=2, batch_size=4, optimizer=ALL_RECIPES[fault.recipes[0]])
    if planted is None:
        with faults.planted(name):
            report = parity.compare(TorchMLP(), blank(NNXMLP), *images, **options)
    else:
        port, loss = planted
        report = parity.compare(TorchMLP(), port, *images, loss=loss, **options)
    first = report.first_failure()
    assert first is not None, f"{name} passed through compare"
    section, quantity = EXPECTED_FIRST_FAILURE[name]
    if section == "step":
        quantity = f"{fault.recipes[0].split('-')[0]}: "  # compare names a step's rows by optimizer
    assert first.section.startswith(section) and first.quantity.startswith(quantity), (
        first.section,
        first.quantity,
    )
    assert first.dtype == "float32" and first.ratio > 1


def test_the_correct_loss_pair_passes(images):
    """The loss pair the planted losses replace agrees, so their failures are theirs."""
    torch.manual_seed(0)
    report = parity.compare(
        TorchMLP(), blank(NNXMLP), *images, loss=CORRECT_LOSS, dtypes=("float32",), steps=0
    )
    assert report.passed, parity.summary(report)
