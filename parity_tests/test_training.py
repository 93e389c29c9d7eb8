"""Training parity: same seed, same batches, same update rule, in either backend.

Step-by-step agreement (teacher-forced, per element) is the parity report's job
(``test_parity.py``); here whole runs: float64 trajectories, bit-identical reruns, resuming
in the other backend, the NaN stop and the tutorial's output.

Each run evaluates on the first 100 test images (``EVAL``): what is compared is the trained
state, not the test score; the full 10,000-image evaluation is test_cli's and the examples'.
"""

from __future__ import annotations

import os
import re

import pytest

from jaxnet import checkpoint, run, tasks
from jaxnet.backends import get_backend
from jaxnet.config import RECIPES, ModelConfig, OptimConfig, TrainConfig
from jaxnet.errors import TrainingError
from jaxnet.numerics import rel_error
from parity_tests.conftest import tree_bytes

EVAL = 100  # test images each epoch's evaluation runs on (a float64 pass over 10k: 0.8 CPU-s)
# The tutorial's three layers, 64 wide instead of 512: what is compared (bit-identity, agreement
# to rounding, the hand-over of optimizer state) does not depend on the width, and a step costs
# a tenth. The thread-count test keeps the full width: MKL splits only large GEMMs over threads.
MODEL = ModelConfig(hidden=(64, 64))


def quiet(_: str) -> None:
    pass


def task(ds, cfg: TrainConfig) -> tasks.ImageTask:
    """``cfg``'s training images, and the first ``EVAL`` test images for the epochs' evaluations."""
    return tasks.ImageTask(ds, cfg, test_limit=EVAL)


def train(backend_name: str, ds, cfg: TrainConfig, config: ModelConfig = MODEL, **kwargs):
    """A shared-init run of ``cfg`` in one backend; returns the backend afterwards."""
    state = checkpoint.init_state_dict(config, cfg.seed, cfg.dtype)
    backend = get_backend(backend_name, config, dtype=cfg.dtype, seed=cfg.seed, state=state)
    run.train(backend, task(ds, cfg), cfg, log=quiet, progress=False, **kwargs)
    return backend


@pytest.mark.parametrize("recipe", ["sgd-nesterov-wd-step", "adamw-cosine"])  # every piece of optimizer state
def test_float64_runs_agree_across_backends(fmnist, recipe):
    """20 free-running float64 steps on the same shuffled batches, through each backend's fast
    path (a compiled scan; torch's loop), land within 1e-11 of each other.

    20 steps cover both schedules whole: the step schedule decays at steps 6, 12 and 18
    (``total_steps // 3``), the cosine runs to 0 over the 20; a slip in either (or in an
    update rule, or a step count off by one) moves the weights by ~lr x gradient, 1e-5 and up.

    Rounding alone: each step adds ~u = 1.1e-16 relative (a few ulps), Adam's normalised
    update amplifies a near-zero gradient's rounding up to ``lr / eps`` = 1e5 times, and 20
    steps accumulate: below 1e-11 even at that worst (measured over 50 steps, before the run
    was shortened: 1e-16 for sgd to 1e-13 for adam).
    """
    cfg = TrainConfig(optimizer=RECIPES[recipe], epochs=1, seed=5, dtype="float64", train_limit=1280)
    jax_params = train("jax", fmnist, cfg).state_dict()
    torch_params = train("torch", fmnist, cfg).state_dict()
    errors = {k: rel_error(jax_params[k], torch_params[k]) for k in jax_params}
    assert max(errors.values()) < 1e-11, errors


def test_torch_runs_are_bit_identical_on_one_thread_and_on_all(fmnist):
    """MKL's strict reproducible mode (jaxnet.process) makes the GEMMs' bits independent of the
    thread count; without it the last layer's weight gradient rounds differently on 1 thread."""
    import torch

    cfg = TrainConfig(optimizer=RECIPES["adam-l2"], epochs=1, seed=3, train_limit=3200)
    threads = torch.get_num_threads()  # 1 in the suite (conftest)
    try:
        torch.set_num_threads(1)
        one = train("torch", fmnist, cfg, ModelConfig()).state_dict()
        torch.set_num_threads(max(2, os.cpu_count() or 1))  # at least two, even on one core
        assert torch.get_num_threads() >= 2
        every = train("torch", fmnist, cfg, ModelConfig()).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(one[k].tobytes() == every[k].tobytes() for k in one)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_seed_same_backend_gives_bit_identical_checkpoints(fmnist, tmp_path, backend):
    cfg = TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=3, train_limit=1280)
    paths = [tmp_path / f"run{i}" for i in range(2)]
    for path in paths:
        train(backend, fmnist, cfg, save=path)
    assert tree_bytes(paths[0]) == tree_bytes(paths[1])
    other = tmp_path / "other-seed"
    train(
        backend,
        fmnist,
        TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=4, train_limit=1280),
        save=other,
    )
    assert tree_bytes(other)["model.safetensors"] != tree_bytes(paths[0])["model.safetensors"]


@pytest.mark.parametrize(("first", "second"), [("torch", "jax"), ("jax", "torch")])
def test_resume_in_the_other_backend_continues_the_trajectory(fmnist, tmp_path, first, second):
    """One epoch in ``first`` then one more in ``second`` == two epochs in ``second``.

    float64 with momentum, nesterov and weight decay, so the momentum buffers must cross too.
    A constant learning rate lets ``--epochs`` grow on resume (a schedule fixes the length).
    """
    opt = OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cfg = TrainConfig(optimizer=opt, epochs=2, seed=1, dtype="float64", train_limit=640)
    path = tmp_path / "half"
    train(first, fmnist, TrainConfig(**{**vars(cfg), "epochs": 1}), save=path)
    half = checkpoint.load(path)
    assert half.step == 10 and half.backend == first
    assert set(half.optimizer) == {f"{k}.momentum_buffer" for k in MODEL.param_shapes()}
    resumed = get_backend(second, MODEL, dtype="float64")
    run.train(resumed, task(fmnist, cfg), cfg, resume=half, log=quiet, progress=False)
    straight = train(second, fmnist, cfg)
    errors = {k: rel_error(resumed.state_dict()[k], v) for k, v in straight.state_dict().items()}
    # 10 steps in the other backend: rounding alone adds ~u = 1.1e-16 relative per step.
    assert max(errors.values()) < 1e-11, errors


def test_resume_with_adam_state_across_backends(fmnist, tmp_path):
    cfg = TrainConfig(optimizer=RECIPES["adam-l2"], epochs=2, seed=2, dtype="float64", train_limit=640)
    path = tmp_path / "adam"
    train("torch", fmnist, TrainConfig(**{**vars(cfg), "epochs": 1}), save=path)
    half = checkpoint.load(path)
    assert {k.rsplit(".", 1)[1] for k in half.optimizer} == {"exp_avg", "exp_avg_sq"}
    resumed = get_backend("jax", MODEL, dtype="float64")
    run.train(resumed, task(fmnist, cfg), cfg, resume=half, log=quiet, progress=False)
    straight = train("jax", fmnist, cfg)
    errors = {k: rel_error(resumed.state_dict()[k], v) for k, v in straight.state_dict().items()}
    assert max(errors.values()) < 1e-11, errors  # 10 Adam steps after the switch


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fmnist, tmp_path):
    path = tmp_path / "good"
    cfg = TrainConfig(epochs=1, seed=0, train_limit=640)
    train("jax", fmnist, cfg, save=path)
    before = tree_bytes(path)
    exploding = TrainConfig(optimizer=OptimConfig(lr=1e12), epochs=2, seed=0, train_limit=640)
    backend = get_backend("jax", MODEL)
    with pytest.raises(
        TrainingError, match=r"loss is (nan|inf) at epoch 2, batch \d+; last good checkpoint kept"
    ):
        run.train(
            backend,
            task(fmnist, exploding),
            exploding,
            save=path,
            resume=checkpoint.load(path),
            log=quiet,
            progress=False,
        )
    assert tree_bytes(path) == before


def test_tutorial_output_format(fmnist):
    """The tutorial's lines: a loss every 100 batches (the 101st batch here is the short tail)."""
    lines: list[str] = []
    cfg = TrainConfig(epochs=1, seed=0, shuffle=False, train_limit=6432)  # 100 batches of 64 + 32
    backend = get_backend("torch", MODEL, state=checkpoint.init_state_dict(MODEL, 0))
    rows = run.train(backend, fmnist, cfg, log=lines.append, progress=False)
    assert lines[0] == "Epoch 1\n-------------------------------"
    assert re.fullmatch(r"loss: 2\.\d{6}  \[   64/ 6432\]", lines[1]), lines[1]  # ln 10 = 2.30 at init
    assert re.fullmatch(r"loss: \d\.\d{6}  \[ 6432/ 6432\]", lines[2]), lines[2]
    assert (
        lines[3]
        == f"Test Error: \n Accuracy: {100 * rows[0].accuracy:>0.1f}%, Avg loss: {rows[0].test_loss:>8f} \n"
    )
    assert lines[4:] == ["Done!"]
