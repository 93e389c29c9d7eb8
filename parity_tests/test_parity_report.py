"""``jaxnet parity`` catches planted faults, each named by the row that fails.

A fault is planted by swapping one function of the JAX side for a subtly wrong version (the
mutation-testing idea: the harness must notice). JAX's compilation caches are cleared around
each plant so no earlier, correct trace is reused.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxnet import model as jmodel
from jaxnet import parity
from jaxnet import train as jtrain
from jaxnet.config import OptimConfig


@pytest.fixture
def plant(monkeypatch):
    jax.clear_caches()
    yield monkeypatch.setattr
    monkeypatch.undo()
    jax.clear_caches()


def quick(fmnist, recipes=("sgd",), dtypes=("float64",)) -> parity.Report:
    return parity.run_parity(fmnist, dtypes=dtypes, steps=3, recipes=recipes, epoch_recipe=None)


def first_failure(report: parity.Report) -> tuple[str, str]:
    assert not report.passed, "the planted fault went unnoticed"
    row = report.failures[0]
    return row.section, row.quantity


def test_the_unplanted_harness_passes(fmnist):
    report = quick(fmnist, recipes=("sgd-momentum-nesterov-wd", "adam"), dtypes=("float64", "float32"))
    assert report.passed, [(r.section, r.quantity, r.dtype, r.error.rel, r.tol) for r in report.failures]
    float32_rows = [r for r in report.rows if r.dtype == "float32"]
    assert all(r.vs_f64 for r in float32_rows)  # each float32 row was also checked against float64
    assert all("both within float32 noise" in r.vs_f64 for r in float32_rows if r.section == "gradient")
    assert report.environment["jax_enable_x64"] == "True"
    assert report.environment["jax_default_matmul_precision"] == "highest"


def test_a_transposed_weight(fmnist, plant):
    original = jmodel.from_torch_layout

    def transposing(template, state):
        key = "linear_relu_stack.2.weight"  # square (512 x 512), so the mistake loads silently
        return original(template, {**state, key: state[key].T})

    plant(jmodel, "from_torch_layout", transposing)
    assert first_failure(quick(fmnist)) == ("forward", "linear_relu_stack.2")


def test_a_wrong_relu_derivative_at_zero(fmnist, plant):
    plant(jmodel, "relu", lambda x: jnp.maximum(x, 0))  # d/dx at 0 is 0.5, not 0
    assert first_failure(quick(fmnist)) == ("probe", "relu'(0): grad linear_relu_stack.0.bias")


def test_weight_decay_after_momentum(fmnist, plant):
    correct = jtrain.make_optimizer

    def decay_after_momentum(cfg: OptimConfig, dtype: str = "float32"):
        if cfg.name != "sgd" or not cfg.momentum:
            return correct(cfg, dtype)
        return optax.chain(
            optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov),
            optax.add_decayed_weights(cfg.weight_decay),  # torch adds it *before* momentum
            optax.scale_by_learning_rate(cfg.lr),
        )

    plant(jtrain, "make_optimizer", decay_after_momentum)
    section, quantity = first_failure(quick(fmnist, recipes=("sgd", "sgd-momentum-nesterov-wd")))
    assert section == "step 3" and quantity.startswith("sgd-momentum-nesterov-wd: ")


def test_log_of_softmax_instead_of_log_softmax(fmnist, plant):
    def naive(logits, labels):
        log_p = jnp.log(jax.nn.softmax(logits, axis=1))  # underflows to log(0) = -inf
        return -jnp.take_along_axis(log_p, labels[:, None], axis=1).mean()

    plant(jtrain, "cross_entropy", naive)
    assert first_failure(quick(fmnist)) == ("probe", f"loss at extreme logits (x{parity.EXTREME_SCALE:g})")


def test_adam_eps_inside_the_square_root(fmnist, plant):
    correct = jtrain.make_optimizer

    def eps_inside(cfg: OptimConfig, dtype: str = "float32"):
        if cfg.name != "adam":
            return correct(cfg, dtype)
        b1, b2 = cfg.betas
        return optax.chain(
            optax.add_decayed_weights(cfg.weight_decay),
            optax.scale_by_adam(b1=b1, b2=b2, eps=0.0, eps_root=cfg.eps),  # sqrt(v + eps)
            optax.scale_by_learning_rate(cfg.lr),
        )

    plant(jtrain, "make_optimizer", eps_inside)
    section, quantity = first_failure(quick(fmnist, recipes=("sgd", "adam")))
    assert section == "step 3" and quantity.startswith("adam: ")


def test_the_command_writes_json_markdown_and_a_plot(tmp_path):
    out = tmp_path / "r"
    result = subprocess.run(
        [sys.executable, "-m", "jaxnet", "parity", "--dtype", "float64", "--steps", "2", "--optimizer", "adam",
         "--epoch-optimizer", "none", "--json", f"{out}.json", "--markdown", f"{out}.md", "--plot", f"{out}.png"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["environment"]["jax_enable_x64"] == "True"
    assert {row["section"] for row in report["rows"]} == {"forward", "gradient", "probe", "step 2"}
    markdown = (tmp_path / "r.md").read_text()
    assert "| forward | linear_relu_stack.0 | float64 |" in markdown
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["highest", "default"])
def test_gpu_parity_in_both_matmul_precisions(fmnist, precision):
    import torch

    if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("needs a CUDA device visible to both torch and jax")
    report = parity.run_parity(fmnist, steps=20, device="cuda", matmul_precision=precision, epoch_recipe=None)
    assert report.passed, [(r.quantity, r.dtype, r.error.rel, r.tol) for r in report.failures]
    if precision == "default":
        assert report.environment["matmul precision in the tolerance model"] == "tf32"
