"""The ``jaxnet`` command as a user runs it: real subprocesses, real files, real signals."""

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
from jaxnet import checkpoint, data

JAXNET = [sys.executable, "-m", "jaxnet"]


def jaxnet(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*JAXNET, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"jaxnet {args} exited {result.returncode}:\n{result.stderr}")
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Bad input: non-zero exit, no traceback, and a final one-line message."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- eval and predict


@pytest.fixture(scope="module")
def tutorial_pth(tmp_path_factory) -> Path:
    """A tutorial-style ``model.pth``: torchref trained on 3,200 images, saved with torch.save."""
    torch.manual_seed(0)
    model = torchref.NeuralNetwork()
    ds = data.load()
    x = torch.from_numpy(ds.train.float_images()[:3200])
    y = torch.from_numpy(ds.train.labels[:3200])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-1)
    torchref.train_loop(zip(x.split(64), y.split(64), strict=True), 3200, model, optimizer, log=None)
    path = tmp_path_factory.mktemp("pth") / "model.pth"
    torch.save(model.state_dict(), path)
    return path


def test_eval_of_a_tutorial_checkpoint_gives_the_same_predictions_in_both_backends(tutorial_pth, fmnist):
    results = {
        b: json.loads(jaxnet("eval", "--backend", b, "--checkpoint", tutorial_pth, "--json").stdout)
        for b in ("jax", "torch")
    }
    assert results["jax"]["total"] == results["torch"]["total"] == 10000
    assert results["jax"]["correct"] == results["torch"]["correct"]
    assert results["jax"]["accuracy"] > 0.5  # 50 steps learned something: chance is 0.1
    # float32 avg loss: 157 per-batch means, each a 64-term sum; the two differ by rounding.
    assert abs(results["jax"]["avg_loss"] - results["torch"]["avg_loss"]) < 1e-5
    # Predictions on every one of the 10,000 test images, not only the count, must agree.
    ckpt = checkpoint.load(tutorial_pth)
    from jaxnet.backend import get_backend

    x = fmnist.test.float_images()
    jax_pred = get_backend("jax", ckpt.config, state=ckpt.model).predict(x).argmax(1)
    torch_pred = get_backend("torch", ckpt.config, state=ckpt.model).predict(x).argmax(1)
    assert np.array_equal(jax_pred, torch_pred)
    text = jaxnet("eval", "--checkpoint", tutorial_pth).stdout
    assert text.startswith(f"Test Error: \n Accuracy: {100 * results['jax']['accuracy']:>0.1f}%, Avg loss: ")


def test_predict_prints_the_quickstart_line(tutorial_pth):
    out = jaxnet("predict", "--checkpoint", tutorial_pth, "--index", "0", "1", "--backend", "torch").stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith('[0] Predicted: "') and lines[0].endswith('", Actual: "Ankle boot"')
    assert len(lines) == 2


def test_convert_pth_to_safetensors_and_back(tutorial_pth, tmp_path):
    jaxnet("convert", tutorial_pth, tmp_path / "m.safetensors")
    jaxnet("convert", tmp_path / "m.safetensors", tmp_path / "back.pth")
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
    ],
)
def test_invalid_flags_get_argparse_errors(args, message):
    result = jaxnet(*args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: jaxnet")
    assert message in result.stderr.strip().splitlines()[-1]


def test_bad_files_get_one_line_errors(tmp_path):
    missing = one_line_error(jaxnet("eval", "--checkpoint", tmp_path / "nope.safetensors", check=False))
    assert missing == f"jaxnet: error: {tmp_path / 'nope.safetensors'}: no such checkpoint file"
    wrong = tmp_path / "wrong.safetensors"
    state = checkpoint.init_state_dict(checkpoint.ModelConfig(), 0)
    state["linear_relu_stack.2.weight"] = state["linear_relu_stack.2.weight"][:, :100]
    wrong.write_bytes(checkpoint.safetensors_bytes(state, {}))
    line = one_line_error(jaxnet("eval", "--checkpoint", wrong, check=False))
    assert "key 'linear_relu_stack.2.weight': expected shape (512, 512), found (512, 100)" in line
    empty = tmp_path / "empty-data"
    empty.mkdir()
    line = one_line_error(jaxnet("eval", "--checkpoint", wrong, "--data-dir", empty, check=False))
    assert "wrong.safetensors" in line  # the checkpoint is checked before the data
    good = tmp_path / "good.safetensors"
    good.write_bytes(
        checkpoint.safetensors_bytes(checkpoint.init_state_dict(checkpoint.ModelConfig(), 0), {})
    )
    line = one_line_error(jaxnet("eval", "--checkpoint", good, "--data-dir", empty, check=False))
    assert line.startswith(f"jaxnet: error: {empty}: missing train-images-idx3-ubyte.gz")


def test_resume_refuses_conflicting_flags(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    jaxnet("train", "--epochs", "1", "--train-limit", "640", "--save", ckpt)
    result = jaxnet("train", "--resume", ckpt, "--lr", "0.5", check=False)
    assert result.returncode == 2
    assert "--lr 0.5 differs from the checkpoint's 0.001" in result.stderr


# ---------------------------------------------------------------------------- interruptions


def _train_args(save: Path, backend: str) -> list[str]:
    # 6,400 images: 100 steps an epoch; the kill comes within ms of the first checkpoint.
    return [
        "train",
        "--backend",
        backend,
        "--epochs",
        "3",
        "--train-limit",
        "6400",
        "--optimizer",
        "adam",
        "--seed",
        "9",
        "--save",
        str(save),
    ]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*JAXNET, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_killed_run_resumes_bit_identical(tmp_path, backend):
    reference = tmp_path / "reference.safetensors"
    jaxnet(*_train_args(reference, backend))
    killed = tmp_path / "killed.safetensors"
    proc = _start(_train_args(killed, backend))
    _wait_for(killed, proc)  # epoch 1 saved; epoch 2 under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(killed).epoch < 3  # it really was stopped before the end
    jaxnet("train", "--backend", backend, "--resume", killed, "--save", killed)
    assert killed.read_bytes() == reference.read_bytes()


def test_ctrl_c_saves_mid_epoch_and_resume_is_bit_identical(tmp_path):
    args = [
        "train",
        "--epochs",
        "3",
        "--train-limit",
        "19200",
        "--optimizer",
        "adam",
        "--seed",
        "9",
    ]  # 300 steps/epoch
    reference = tmp_path / "reference.safetensors"
    jaxnet(*args, "--save", reference)
    stopped = tmp_path / "stopped.safetensors"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*JAXNET, *args, "--save", str(stopped)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in proc.stdout:  # the first loss line of epoch 2 comes after step 400
        if line.startswith("Epoch 2"):
            next(proc.stdout)
            next(proc.stdout)
            break
    # Epoch 2 is steps 300..599; its first loss line is printed once step 400 is done. The flag
    # is checked after each 100-step chunk, so the save happens at step 400 or 500: mid-epoch.
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    assert checkpoint.load(stopped).step in (400, 500)
    jaxnet("train", "--resume", stopped, "--save", stopped)
    assert stopped.read_bytes() == reference.read_bytes()


def test_metrics_and_plot(tmp_path):
    metrics, plot = tmp_path / "m.jsonl", tmp_path / "m.png"
    jaxnet("train", "--epochs", "2", "--train-limit", "1280", "--metrics", metrics, "--plot", plot)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "test_loss", "accuracy", "seconds", "samples_per_s"} <= rows[0].keys()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    overlay = tmp_path / "overlay.png"
    jaxnet("plot", metrics, metrics, "-o", overlay)
    assert overlay.stat().st_size > 10_000
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "not JSON lines" in one_line_error(jaxnet("plot", bad, "-o", overlay, check=False))
