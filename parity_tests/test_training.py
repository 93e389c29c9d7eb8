"""Training parity: same seed, same batches, same update rule, in either backend.

Full epochs on the real 60,000 training images, so these are the suite's slowest tests.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxnet import checkpoint, run
from jaxnet.backend import get_backend
from jaxnet.compare import compare
from jaxnet.config import ModelConfig, OptimConfig, TrainConfig
from jaxnet.errors import TrainingError

RECIPES = {
    "sgd": OptimConfig(),
    "sgd-momentum-nesterov-wd-step": OptimConfig(
        name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="step"
    ),
    "adam-l2": OptimConfig(name="adam", lr=1e-3, weight_decay=1e-4),
    "adamw-cosine": OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-2, schedule="cosine"),
}


def quiet(_: str) -> None:
    pass


def train(backend_name: str, ds, cfg: TrainConfig, **kwargs):
    """A shared-init run of ``cfg`` in one backend; returns the backend afterwards."""
    config = ModelConfig()
    state = checkpoint.init_state_dict(config, cfg.seed, cfg.dtype)
    backend = get_backend(backend_name, config, dtype=cfg.dtype, seed=cfg.seed, state=state)
    run.train(backend, ds, cfg, log=quiet, progress=False, **kwargs)
    return backend


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_float64_one_epoch_agrees_across_backends(fmnist, recipe):
    """After 938 steps on the same batches, float64 parameters agree to 1e-10 (the issue's bar).

    Rounding alone would give ~1e-13 (u = 1.1e-16, sqrt(1808) ~ 43, 938 steps, linear
    growth), Adam's normalised update amplifies it by a few; measured worst: ~2e-11 (adam).
    """
    cfg = TrainConfig(optimizer=RECIPES[recipe], epochs=1, seed=5, dtype="float64")
    jax_params = train("jax", fmnist, cfg).state_dict()
    torch_params = train("torch", fmnist, cfg).state_dict()
    errors = {k: compare(jax_params[k], torch_params[k]).rel for k in jax_params}
    assert max(errors.values()) < 1e-10, errors


@pytest.mark.slow
def test_float32_tutorial_epoch_gives_the_same_predictions(fmnist):
    """float32 trajectories drift by rounding (~5e-5 relative after one epoch), so the bar is
    the outcome: the same predicted class on at least 99.9% of the 10,000 test images."""
    cfg = TrainConfig(epochs=1, seed=0)
    x = fmnist.test.float_images("float32")
    predictions = {b: train(b, fmnist, cfg).predict(x).argmax(1) for b in ("jax", "torch")}
    agree = np.mean(predictions["jax"] == predictions["torch"])
    assert agree >= 0.999, agree


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_seed_same_backend_gives_bit_identical_checkpoints(fmnist, tmp_path, backend):
    cfg = TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=3, train_limit=3200)
    paths = [tmp_path / f"run{i}.safetensors" for i in range(2)]
    for path in paths:
        train(backend, fmnist, cfg, save=path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    other = tmp_path / "other-seed.safetensors"
    train(
        backend,
        fmnist,
        TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=4, train_limit=3200),
        save=other,
    )
    assert other.read_bytes() != paths[0].read_bytes()


@pytest.mark.parametrize(("first", "second"), [("torch", "jax"), ("jax", "torch")])
def test_resume_in_the_other_backend_continues_the_trajectory(fmnist, tmp_path, first, second):
    """One epoch in ``first`` then one more in ``second`` == two epochs in ``second``.

    float64 with momentum, nesterov and weight decay, so the momentum buffers must cross too.
    A constant learning rate lets ``--epochs`` grow on resume (a schedule fixes the length).
    """
    opt = OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cfg = TrainConfig(optimizer=opt, epochs=2, seed=1, dtype="float64", train_limit=6400)
    path = tmp_path / "half.safetensors"
    train(first, fmnist, TrainConfig(**{**vars(cfg), "epochs": 1}), save=path)
    half = checkpoint.load(path)
    assert half.step == 100 and half.backend == first
    assert set(half.optimizer) == {f"{k}.momentum_buffer" for k in ModelConfig().param_shapes()}
    resumed = get_backend(second, ModelConfig(), dtype="float64")
    run.train(resumed, fmnist, cfg, resume=half, log=quiet, progress=False)
    straight = train(second, fmnist, cfg)
    errors = {k: compare(resumed.state_dict()[k], v).rel for k, v in straight.state_dict().items()}
    # 100 steps in the other backend: rounding alone, 16 * sqrt(1808) * 1.1e-16 * 100 ~ 8e-12.
    assert max(errors.values()) < 1e-11, errors


def test_resume_with_adam_state_across_backends(fmnist, tmp_path):
    cfg = TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=2, dtype="float64", train_limit=3200)
    path = tmp_path / "adam.safetensors"
    train("torch", fmnist, TrainConfig(**{**vars(cfg), "epochs": 1}), save=path)
    half = checkpoint.load(path)
    assert {k.rsplit(".", 1)[1] for k in half.optimizer} == {"exp_avg", "exp_avg_sq"}
    resumed = get_backend("jax", ModelConfig(), dtype="float64")
    run.train(resumed, fmnist, cfg, resume=half, log=quiet, progress=False)
    straight = train("jax", fmnist, cfg)
    errors = {k: compare(resumed.state_dict()[k], v).rel for k, v in straight.state_dict().items()}
    assert max(errors.values()) < 1e-11, errors  # 50 Adam steps after the switch


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fmnist, tmp_path):
    path = tmp_path / "good.safetensors"
    cfg = TrainConfig(epochs=1, seed=0, train_limit=640)
    train("jax", fmnist, cfg, save=path)
    before = path.read_bytes()
    exploding = TrainConfig(optimizer=OptimConfig(lr=1e12), epochs=2, seed=0, train_limit=640)
    backend = get_backend("jax", ModelConfig())
    with pytest.raises(
        TrainingError, match=r"loss is (nan|inf) at epoch 2, batch \d+; last good checkpoint kept"
    ):
        run.train(
            backend, fmnist, exploding, save=path, resume=checkpoint.load(path), log=quiet, progress=False
        )
    assert path.read_bytes() == before


def test_tutorial_output_format(fmnist):
    """The tutorial's lines: a loss every 100 batches (the 101st batch here is the short tail)."""
    lines: list[str] = []
    cfg = TrainConfig(epochs=1, seed=0, shuffle=False, train_limit=6432)  # 100 batches of 64 + 32
    backend = get_backend("torch", ModelConfig(), state=checkpoint.init_state_dict(ModelConfig(), 0))
    rows = run.train(backend, fmnist, cfg, log=lines.append, progress=False)
    assert lines[0] == "Epoch 1\n-------------------------------"
    assert re.fullmatch(r"loss: 2\.\d{6}  \[   64/ 6432\]", lines[1]), lines[1]  # ln 10 = 2.30 at init
    assert re.fullmatch(r"loss: \d\.\d{6}  \[ 6432/ 6432\]", lines[2]), lines[2]
    assert (
        lines[3]
        == f"Test Error: \n Accuracy: {100 * rows[0].accuracy:>0.1f}%, Avg loss: {rows[0].test_loss:>8f} \n"
    )
    assert lines[4:] == ["Done!"]
