"""Weight interchange: torch layout <-> jaxnet params, safetensors files, tutorial .pth files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import torchref
from jaxnet import checkpoint, files
from jaxnet.backends import get_backend
from jaxnet.backends.jax import JaxBackend
from jaxnet.config import ModelConfig
from jaxnet.errors import CheckpointError
from parity_tests.conftest import tree_bytes

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
    path = tmp_path / "w"
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
        ("inf", r"key 'linear_relu_stack.0.weight': holds NaN or inf"),
        ("-inf", r"key 'linear_relu_stack.0.weight': holds NaN or inf"),
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
    elif fault in ("nan", "inf", "-inf"):
        state["linear_relu_stack.0.weight"][3, 3] = float(fault)
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
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors in this directory"):
        checkpoint.load(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="a checkpoint is a directory"):
        checkpoint.save(
            tmp_path / "model.safetensors", checkpoint.Checkpoint(checkpoint.init_state_dict(SMALL, 0), SMALL)
        )


def _trained(tmp_path, name="ckpt", seed=0):
    """A checkpoint with optimizer state, from a short real run."""
    from jaxnet import data, run
    from jaxnet.config import OptimConfig, TrainConfig

    cfg = TrainConfig(optimizer=OptimConfig(name="adam"), epochs=1, seed=seed, train_limit=128)
    backend = get_backend("torch", SMALL, state=checkpoint.init_state_dict(SMALL, seed))
    run.train(backend, data.load(), cfg, save=tmp_path / name, log=lambda _: None, progress=False)
    return tmp_path / name


def test_the_weights_file_is_the_tutorial_classs_state_dict(tmp_path):
    """torch users load model.safetensors strictly; Flax users get the model in one call."""
    import jax.numpy as jnp
    import safetensors.torch

    import jaxnet

    path = _trained(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    model = torchref.NeuralNetwork(784, (32, 16), 10)
    model.load_state_dict(safetensors.torch.load_file(path / "model.safetensors"), strict=True)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    flax_model = jaxnet.load_model(path)
    assert np.array_equal(
        np.asarray(flax_model(jnp.asarray(x))).argmax(1), model(torch.from_numpy(x)).argmax(1).numpy()
    )
    ckpt = checkpoint.load(path)
    assert ckpt.step == 2 and set(ckpt.optimizer) == {
        f"{k}.{s}" for k in SMALL.param_shapes() for s in ("exp_avg", "exp_avg_sq")
    }


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = _trained(tmp_path)
    finally:
        os.umask(old)
    assert {oct(f.stat().st_mode & 0o777) for f in path.iterdir()} == {oct(0o640)}
    assert oct(path.stat().st_mode & 0o777) == oct(0o750)


def test_format_1_single_files_still_load(tmp_path):
    """Before checkpoint directories: weights, ``optimizer.`` tensors and metadata in one file."""
    new = checkpoint.load(_trained(tmp_path))
    tensors = new.model | {f"optimizer.{k}": v for k, v in new.optimizer.items()}
    metadata = {"format": "jaxnet-checkpoint", "format_version": "1", "model_config": new.config.to_json(),
                "train_config": new.train_config.to_json(), "progress": json.dumps({"epoch": 1, "step": 2})}  # fmt: skip
    (tmp_path / "old.safetensors").write_bytes(files.safetensors_bytes(tensors, metadata))
    old = checkpoint.load(tmp_path / "old.safetensors")
    assert (old.step, old.epoch, old.train_config, old.config) == (
        new.step,
        new.epoch,
        new.train_config,
        new.config,
    )
    assert _bits_equal(old.model, new.model) and _bits_equal(old.optimizer, new.optimizer)


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = _trained(tmp_path)
    before = tree_bytes(path)
    good = checkpoint.load(path)
    bad = checkpoint.Checkpoint(
        model={**good.model, "linear_relu_stack.0.bias": np.zeros(3, np.float32)}, config=SMALL
    )
    with pytest.raises(CheckpointError):  # refused before anything is written
        checkpoint.save(path, bad)
    written = files.atomic_write

    def disk_full(target, data):  # the weights go in, then the disk fills up
        if target.name == "optimizer.safetensors":
            raise OSError(28, "No space left on device")
        written(target, data)

    monkeypatch.setattr(files, "atomic_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, good)
    assert tree_bytes(path) == before
    assert os.listdir(tmp_path) == ["ckpt"]  # the half-written directory is gone


def test_save_refuses_a_directory_that_holds_other_files(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    ckpt = checkpoint.Checkpoint(checkpoint.init_state_dict(SMALL, 0), SMALL)
    with pytest.raises(CheckpointError, match=r"holds notes\.txt, not only a checkpoint"):
        checkpoint.save(tmp_path / "runs", ckpt)
    assert (tmp_path / "runs" / "notes.txt").read_text() == "mine"


def test_a_save_stopped_between_its_renames_loses_nothing(tmp_path):
    """The old directory is renamed aside before the new one moves in: a crash between the
    two leaves ``.<name>.old``, which load reads and the next save puts back first."""
    path = _trained(tmp_path)
    before = tree_bytes(path)
    os.replace(path, tmp_path / ".ckpt.old")  # the state such a crash leaves
    assert not path.exists() and checkpoint.load(path).step == 2
    ckpt = checkpoint.load(path)
    checkpoint.save(path, ckpt)
    assert tree_bytes(path) == before and os.listdir(tmp_path) == ["ckpt"]
    # A save that stopped while removing the old directory leaves both: the next one still works.
    (tmp_path / ".ckpt.old").mkdir()
    (tmp_path / ".ckpt.old" / "state.json").write_text("{}")
    checkpoint.save(path, ckpt)
    assert tree_bytes(path) == before and os.listdir(tmp_path) == ["ckpt"]
