"""Weight interchange: torch layout <-> jaxnet params, safetensors files, tutorial .pth files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import torchref
from jaxnet import checkpoint
from jaxnet.backends import get_backend
from jaxnet.backends.jax import JaxBackend
from jaxnet.config import ModelConfig
from jaxnet.errors import CheckpointError

SMALL = ModelConfig(in_features=784, hidden=(32, 16), num_classes=10)


def _bits_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_identical_through_both_backends_and_a_file(tmp_path, dtype):
    jax_side = JaxBackend(SMALL, dtype=dtype, seed=7)  # JAX's own init, not the numpy one
    original = jax_side.state_dict()
    assert original["linear_relu_stack.0.weight"].shape == (32, 784)  # torch's [out, in]
    torch_side = get_backend("torch", SMALL, dtype=dtype, state=original)
    assert _bits_equal(torch_side.state_dict(), original)
    path = tmp_path / "w.safetensors"
    checkpoint.save(path, checkpoint.Checkpoint(model=torch_side.state_dict(), config=SMALL))
    loaded = checkpoint.load(path)
    assert loaded.config == SMALL and _bits_equal(loaded.model, original)
    back = JaxBackend(SMALL, dtype=dtype, seed=8)
    back.load_state_dict(loaded.model)
    assert _bits_equal(back.state_dict(), original)


def test_default_init_follows_torch_linear_distribution():
    state = JaxBackend(ModelConfig(), seed=0).state_dict()
    for key, value in state.items():
        fan_in = 784 if key.startswith("linear_relu_stack.0") else 512
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(value).max() <= bound
        # U(-b, b) has mean 0 and std b / sqrt(3); 512 * 784 draws pin both well.
        if value.size > 5000:
            assert abs(value.std() - bound / np.sqrt(3)) < 0.02 * bound
            assert abs(value.mean()) < 0.02 * bound
    assert not np.all(state["linear_relu_stack.0.bias"] == 0)  # torch's init, not Flax's zeros


def test_tutorial_pth_loads_in_both_backends(tmp_path):
    torch.manual_seed(0)
    model = torchref.NeuralNetwork()
    torch.save(model.state_dict(), tmp_path / "model.pth")
    ckpt = checkpoint.load(tmp_path / "model.pth")
    assert ckpt.config == ModelConfig()
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    assert _bits_equal(ckpt.model, expected)
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    jax_logits = get_backend("jax", ckpt.config, state=ckpt.model).predict(x)
    torch_logits = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(jax_logits, torch_logits, rtol=0, atol=1e-6)  # float32, K = 1808


def test_non_default_sizes_are_inferred_from_a_state_dict():
    config = ModelConfig(in_features=784, hidden=(64, 32, 16), num_classes=10)
    state = checkpoint.init_state_dict(config, 0)
    assert checkpoint.infer_config(state) == config


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing", r"missing key 'linear_relu_stack.4.bias'"),
        ("extra", r"unexpected key 'linear_relu_stack.6.weight'"),
        ("shape", r"key 'linear_relu_stack.2.weight': expected float32\[16, 32\], found float32\[32, 16\]"),
        (
            "dtype",
            r"key 'linear_relu_stack.0.weight': expected float32 or float64\[32, 784\], found float16\[32, 784\]",
        ),
        ("mixed", r"key 'linear_relu_stack.2.weight': expected float32\[16, 32\], found float64\[16, 32\]"),
        ("nan", r"key 'linear_relu_stack.0.weight': holds NaN or inf"),
    ],
)
def test_bad_state_dicts_name_key_expected_and_found(fault, message):
    state = checkpoint.init_state_dict(SMALL, 0)
    if fault == "missing":
        del state["linear_relu_stack.4.bias"]
    elif fault == "extra":
        state["linear_relu_stack.6.weight"] = np.zeros((1, 1), np.float32)
    elif fault == "shape":
        state["linear_relu_stack.2.weight"] = state["linear_relu_stack.2.weight"].T.copy()
    elif fault == "dtype":
        state = {k: v.astype(np.float16) for k, v in state.items()}
    elif fault == "mixed":
        state["linear_relu_stack.2.weight"] = state["linear_relu_stack.2.weight"].astype(np.float64)
    elif fault == "nan":
        state["linear_relu_stack.0.weight"][3, 3] = np.nan
    with pytest.raises(CheckpointError, match=message):
        checkpoint.validate_state_dict(state, SMALL)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backends_reject_a_dtype_or_shape_they_were_not_built_for(backend):
    model = get_backend(backend, SMALL, dtype="float32")
    state = checkpoint.init_state_dict(SMALL, 0, "float64")
    with pytest.raises(
        CheckpointError, match=r"key 'linear_relu_stack.0.\w+': expected float32\[.*found float64"
    ):
        model.load_state_dict(state)


def test_unreadable_files_are_errors_not_tracebacks(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        checkpoint.load(junk)
    pth = tmp_path / "junk.pth"
    pth.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not a loadable state dict"):
        checkpoint.load(pth)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "absent.safetensors")


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    good = checkpoint.Checkpoint(model=checkpoint.init_state_dict(SMALL, 0), config=SMALL)
    checkpoint.save(path, good)
    before = path.read_bytes()
    bad = checkpoint.Checkpoint(
        model={**good.model, "linear_relu_stack.0.bias": np.zeros(3, np.float32)}, config=SMALL
    )
    with pytest.raises(CheckpointError):
        checkpoint.save(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # no temp file left behind
