"""The ``jaxnet`` command as a user runs it: real files, real signals.

Commands run in-process through ``main(argv)`` with their output captured; a subprocess only
where the process itself is the subject (SIGKILL, Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torchref
from jaxnet import checkpoint, data, files
from jaxnet.backends import get_backend
from jaxnet.cli import build_parser, main
from jaxnet.numerics import UNIT_ROUNDOFF
from parity_tests.conftest import tree_bytes

JAXNET = [sys.executable, "-m", "jaxnet"]
CNN_SIZE = ["channels=4,8", "hidden=16"]  # the CNN's layers, tiny (the default is 32,64 and 128)


def jaxnet(capsys, *args) -> str:
    """Run ``jaxnet ARGS`` in-process; return its stdout (it must succeed)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


# ---------------------------------------------------------------------------- eval and predict


@pytest.fixture(scope="module")
def tutorial_pth(tmp_path_factory) -> Path:
    """A tutorial-style ``model.pth``: torchref trained on 3,200 images, saved with torch.save."""
    torch.manual_seed(0)
    model = torchref.NeuralNetwork()
    ds = data.load()
    x = torch.from_numpy(ds.train[:3200].float_images())
    y = torch.from_numpy(ds.train.labels[:3200])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)
    torchref.train_loop(zip(x.split(64), y.split(64), strict=True), 3200, model, optimizer, log=None)
    path = tmp_path_factory.mktemp("pth") / "model.pth"
    torch.save(model.state_dict(), path)
    return path


def test_eval_of_a_tutorial_checkpoint_gives_the_same_predictions_in_both_backends(
    tutorial_pth, fmnist, capsys
):
    results = {
        b: json.loads(jaxnet(capsys, "eval", "--backend", b, "--checkpoint", tutorial_pth, "--json"))
        for b in ("jax", "torch")
    }
    assert results["jax"]["total"] == results["torch"]["total"] == 10000
    assert results["jax"]["accuracy"] > 0.5  # 50 steps learned something: chance is 0.1
    # float32 avg loss: 157 per-batch means of 64-term sums, each rounded: a few u apart.
    assert abs(results["jax"]["avg_loss"] - results["torch"]["avg_loss"]) < 1e-5
    # Predictions on every one of the 10,000 test images: a difference must be a near-tie of
    # the top two logits, within rounding (float32 logits agree to ~1e-6 relative).
    ckpt = checkpoint.load(tutorial_pth)
    x = fmnist.test.float_images()
    logits_j = get_backend("jax", ckpt.config, state=ckpt.model).predict(x)
    logits_t = get_backend("torch", ckpt.config, state=ckpt.model).predict(x)
    differ = np.flatnonzero(logits_j.argmax(1) != logits_t.argmax(1))
    top2 = np.sort(logits_t[differ], axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] <= 1e-5 * np.abs(logits_t).max()), differ
    assert abs(results["jax"]["correct"] - results["torch"]["correct"]) <= len(differ)
    text = jaxnet(capsys, "eval", "--checkpoint", tutorial_pth)
    assert text.startswith(f"Test Error: \n Accuracy: {100 * results['jax']['accuracy']:>0.1f}%, Avg loss: ")


def test_predict_prints_the_quickstart_line(tutorial_pth, capsys):
    out = jaxnet(capsys, "predict", "--checkpoint", tutorial_pth, "--index", "0", "1", "--backend", "torch")
    lines = out.strip().splitlines()
    assert lines[0].startswith('[0] Predicted: "') and lines[0].endswith('", Actual: "Ankle boot"')
    assert len(lines) == 2


def test_convert_pth_to_safetensors_and_back(tutorial_pth, tmp_path, capsys):
    jaxnet(capsys, "convert", tutorial_pth, tmp_path / "m.safetensors")
    jaxnet(capsys, "convert", tmp_path / "m.safetensors", tmp_path / "back.pth")
    original = torch.load(tutorial_pth, weights_only=True)
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert all(torch.equal(original[k], back[k]) for k in original)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--lr", "-1"], "learning rate must be positive, got -1.0"),
        (["train", "--lr", "nan"], "argument --lr: must be finite, got nan"),
        (["train", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
        (["train", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
        (["train", "--nesterov"], "nesterov needs --optimizer sgd and a non-zero --momentum"),
        (["train", "--momentum", "0.9", "--optimizer", "adam"], "--momentum applies to sgd only"),
        (["eval"], "the following arguments are required: --checkpoint"),
        (["parity", "--plant", "no-such-bug"], "--plant: unknown fault 'no-such-bug'"),
        (["train", "--model", "cnn", "--hidden", "256"], "--hidden sizes the MLP"),
        (["train", "--step-size", "-1"], "argument --step-size: must be >= 0"),
        (["parity", "--model", "cnn", "--devices", "2"], "--devices is for --model mlp"),
        (["parity", "--workers", "0"], "argument --workers: must be >= 1, got 0"),
        (
            ["parity", "--plant", "adam-eps-1e-7", "--workers", "2"],
            "--workers 2: a planted fault lives in this",
        ),
        (
            ["parity", "--model", "resnet", "--workers", "2"],
            "--workers 2: --model resnet compares in one process",
        ),
    ],
)
def test_invalid_flags_get_argparse_errors(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: jaxnet") and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def test_every_flag_of_every_command_is_explained():
    """``-h`` explains every argument; every flag with a default says what it is."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest in ("help",):
                continue
            assert action.help, f"jaxnet {name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False) and action.nargs != 0:
                assert "default" in action.help, f"jaxnet {name} {action.option_strings}: default not shown"


def test_bad_files_get_one_line_errors(tmp_path, capsys):
    def error(*args) -> str:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.strip().splitlines()[-1]

    missing = tmp_path / "nope"
    assert error("eval", "--checkpoint", missing) == f"jaxnet: error: {missing}: no such checkpoint"
    wrong = tmp_path / "wrong.safetensors"
    state = checkpoint.init_state_dict(checkpoint.ModelConfig(), 0)
    state["linear_relu_stack.2.weight"] = state["linear_relu_stack.2.weight"][:, :100]
    wrong.write_bytes(files.safetensors_bytes(state, {}))
    line = error("eval", "--checkpoint", wrong)
    assert "key 'linear_relu_stack.2.weight': expected float32[512, 512], found float32[512, 100]" in line
    empty = tmp_path / "empty-data"
    empty.mkdir()
    assert "wrong.safetensors" in error(
        "eval", "--checkpoint", wrong, "--data-dir", empty
    )  # checkpoint first
    good = tmp_path / "good.safetensors"
    good.write_bytes(files.safetensors_bytes(checkpoint.init_state_dict(checkpoint.ModelConfig(), 0), {}))
    line = error("eval", "--checkpoint", good, "--data-dir", empty)
    assert line.startswith(f"jaxnet: error: {empty}: missing train-images-idx3-ubyte.gz")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "not JSON lines" in error("plot", bad, "-o", tmp_path / "x.png")


def test_resume_refuses_conflicting_flags(tmp_path, capsys):
    ckpt = tmp_path / "c"
    jaxnet(capsys, "train", "--epochs", "1", "--train-limit", "640", "--test-limit", "64", "--save", ckpt)
    for flags, message in (
        (["--lr", "0.5"], "--lr 0.5 differs from the checkpoint's 0.001"),
        (["--hidden", "256"], "--hidden 256 differs from the checkpoint's (512, 512)"),
        (["--dtype", "float64"], "--dtype float64 differs from the checkpoint's float32"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--resume", str(ckpt), *flags])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_the_cnn_trains_resumes_in_the_other_backend_and_predicts_alike(tmp_path, fmnist, capsys):
    """``--model cnn``: an epoch in torch, the next in JAX from its checkpoint (the model, a
    non-default size, comes from the checkpoint), then both backends predict alike with what
    JAX saved. Tiny layers and 256 test images: the claim is the hand-over, not the size."""
    first, second = tmp_path / "torch", tmp_path / "jax"
    jaxnet(capsys, "train", "--model", "cnn", "--size", *CNN_SIZE, "--backend", "torch", "--epochs", "1",
           "--train-limit", "128", "--test-limit", "256", "--save", first)  # fmt: skip
    with pytest.raises(SystemExit):  # the checkpoint holds a CNN
        main(["train", "--model", "mlp", "--resume", str(first)])
    assert "--model mlp differs from the checkpoint's cnn" in capsys.readouterr().err
    out = jaxnet(capsys, "train", "--backend", "jax", "--resume", first, "--epochs", "2", "--test-limit", "256",
                 "--save", second)  # fmt: skip
    assert "Epoch 2" in out and "Epoch 1\n" not in out
    saved = checkpoint.load(second)
    assert (saved.config.kind, saved.step, saved.backend) == ("cnn", 4, "jax")
    assert {"conv1.weight", "fc2.bias"} <= saved.model.keys()
    assert (saved.config.channels, saved.config.hidden) == ((4, 8), 16)  # the checkpoint's size, kept
    # Both backends predict with that checkpoint (the first 1,000 test images): a prediction may
    # differ only at a near-tie of the top two log-probabilities, within the worst-case float32
    # rounding of the four layers' reductions (conv1 9, conv2 9 * 4, fc1 8 * 12 * 12, fc2 16 terms).
    x = fmnist.test[:1000].float_images()
    out_j = get_backend("jax", saved.config, state=saved.model).predict(x)
    out_t = get_backend("torch", saved.config, state=saved.model).predict(x)
    differ = np.flatnonzero(out_j.argmax(1) != out_t.argmax(1))
    top2 = np.sort(out_t[differ], axis=1)[:, -2:]
    c1, c2 = saved.config.channels
    bound = (9 + 9 * c1 + c2 * 144 + saved.config.hidden) * UNIT_ROUNDOFF["float32"] * np.abs(out_t).max()
    assert np.all(top2[:, 1] - top2[:, 0] <= bound), differ


def test_metrics_and_plot(tmp_path, capsys):
    metrics, plot = tmp_path / "m.jsonl", tmp_path / "m.png"
    jaxnet(capsys, "train", "--epochs", "2", "--train-limit", "640", "--hidden", "32", "--test-limit", "64",
           "--metrics", metrics, "--plot", plot)  # fmt: skip
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "test_loss", "accuracy", "seconds", "samples_per_s"} <= rows[0].keys()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = tmp_path / "overlay.png"
    jaxnet(capsys, "plot", metrics, metrics, "-o", overlay)
    assert overlay.stat().st_size > 10_000


# ---------------------------------------------------------------------------- interruptions


# The interrupted runs: a 64-wide MLP evaluated on 64 test images (the checkpoints, the subject,
# do not depend on the test images), so that a step costs a few ms and an evaluation nothing.
SMALL_RUN = ["--hidden", "64", "--test-limit", "64", "--optimizer", "adam", "--seed", "9"]


def _train_args(save: Path, backend: str, *extra: str) -> list[str]:
    # 6,400 images, 100 steps an epoch: the kill comes within ms of the first checkpoint, with
    # two epochs (200 steps, about a second of work) still to go.
    return ["train", "--backend", backend, "--epochs", "3", "--train-limit", "6400", *SMALL_RUN,
            "--save", str(save), *extra]  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", ["torch"])  # jax: the Ctrl-C test below resumes bit-identically too
def test_killed_run_resumes_bit_identical(tmp_path, backend, capsys):
    reference = tmp_path / "reference"
    jaxnet(capsys, *_train_args(reference, backend))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*JAXNET, *_train_args(killed, backend)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for(killed, proc)  # epoch 1 saved; epoch 2 under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(killed).epoch < 3  # it really was stopped before the end
    jaxnet(capsys, "train", "--backend", backend, "--resume", killed, "--test-limit", "64", "--save", killed)
    assert tree_bytes(killed) == tree_bytes(reference)


def test_ctrl_c_saves_mid_epoch_and_resume_is_bit_identical(tmp_path, capsys):
    args = ["train", "--epochs", "3", "--train-limit", "19200", *SMALL_RUN]  # 300 steps/epoch
    reference = tmp_path / "reference"
    jaxnet(capsys, *args, "--save", reference)
    stopped = tmp_path / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*JAXNET, *args, "--save", str(stopped)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    for line in proc.stdout:  # the first loss line of epoch 2 comes after step 400
        if line.startswith("Epoch 2"):
            next(proc.stdout)
            next(proc.stdout)
            break
    # Epoch 2 is steps 300..599; its first loss line is printed once step 400 is done. The flag
    # is checked after each 100-step chunk, so the save comes at step 400 or later (500 or the
    # next epoch's 700 or 800 if this process was slow to send the signal): mid-epoch.
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    step = checkpoint.load(stopped).step
    assert 400 <= step < 900 and step % 300 != 0, step
    jaxnet(capsys, "train", "--resume", stopped, "--test-limit", "64", "--save", stopped)
    assert tree_bytes(stopped) == tree_bytes(reference)
