"""compare's probes beyond ReLU'(0) (GELU's bend, max-pool ties), its outcome rows, the dropout
masks handed to an NNX port per instance, and the calibrator's report over several models.

Tiny pairs (``port_models``): the MLP and CNN of the built-in reports in small, on 12x12 crops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxnet import capture, parity
from jaxnet.parity import calibrate
from parity_tests.port_models import NNXMLP, TorchMLP


@pytest.fixture(scope="module")
def images(crops16):
    return crops16


def test_gelu_tanh_fails_the_bend_probe_and_the_outcome_rows_are_there(images):
    """A GELU port in tanh form: the probe with weights x4 (pre-activations at GELU's bend)
    names the layer after it. The steps (all 16 inputs per step) cover the inputs: outcome rows."""
    torch.manual_seed(0)
    torch_net = TorchMLP(act=torch.nn.GELU)
    port = NNXMLP(rngs=nnx.Rngs(0), act=lambda x: jax.nn.gelu(x, approximate=True))
    report = parity.compare(torch_net, port, *images, dtypes=("float32",), steps=1)
    bend = [r for r in report.rows if r.kind == "probe bend" and not r.passed]
    assert bend and bend[0].quantity == "linear_relu_stack.2", parity.summary(report)
    assert bend[0].ratio > 10  # the bend moves it far from its bound, not barely
    outcome = [r for r in report.rows if r.kind == "outcome"]
    assert [r.quantity.split(" ")[1] for r in outcome] == ["input", "input", "input"]
    assert "outcome" in report.environment


def test_an_exact_gelu_port_passes_the_bend_probe(images):
    torch.manual_seed(0)
    port = NNXMLP(rngs=nnx.Rngs(0), act=lambda x: jax.nn.gelu(x, approximate=False))
    report = parity.compare(TorchMLP(act=torch.nn.GELU), port, *images, dtypes=("float32",), steps=0)
    assert report.passed, parity.summary(report)
    assert any(r.kind == "probe bend" for r in report.rows)


def test_dropout_masks_reach_the_instances_and_the_class_is_untouched():
    """Handed masks, a model's dropouts keep what the masks keep (scaled by 1/keep); the class
    ``nnx.Dropout`` is the same before, during and after, and a second model is unaffected."""
    call = nnx.Dropout.__call__
    model = nnx.Sequential(nnx.Dropout(0.5, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    other = nnx.Dropout(0.5, deterministic=True)
    mask = jnp.array([[1.0, 0.0, 1.0, 1.0]])
    with capture.shared_dropout(model, {"layers.0": mask}):
        assert nnx.Dropout.__call__ is call
        out = model.layers[0](jnp.ones((1, 4)))
        np.testing.assert_array_equal(np.asarray(out), [[2.0, 0.0, 2.0, 2.0]])  # exact: x / 0.5
        assert np.array_equal(np.asarray(other(jnp.ones((1, 4)))), np.ones((1, 4)))  # no mask: its own
    assert nnx.Dropout.__call__ is call and type(model.layers[0]) is nnx.Dropout


def test_the_calibration_report_has_a_table_per_model_and_the_label():
    runs = [
        {"order": o, "model": m, "seed": 0, "worst": {"forward float32": 2.0 + i}, "failed": []}
        for i, (o, m) in enumerate([("default", "mlp"), ("one-thread", "mlp"), ("default", "gpt")])
    ]
    text = calibrate.markdown(runs, {}, 1, 2, ("mlp", "gpt"), "a small run: not the calibration")
    assert "## mlp" in text and "## gpt" in text and "a small run: not the calibration" in text
    assert "| forward float32 | 2.00 | 3.00 |" in text and "Largest over every row and order: 3.00" in text
    assert "--seeds 1 --steps 2 --models mlp,gpt" in text
