"""The ResNet and the GPT through the command line: train, checkpoint, eval, resume, generate.

Tiny configurations (a few hundred images, a handful of steps) in-process through ``main``;
the full sizes are the CLI's defaults, run on a GPU (README). The registry's shape (what a
family declares) is held here too.
"""

from __future__ import annotations

import dataclasses
import json
import signal

import numpy as np
import pytest

from jaxnet import checkpoint, registry, tasks
from jaxnet.backends import get_backend
from jaxnet.cli import main
from jaxnet.numerics import UNIT_ROUNDOFF
from parity_tests.conftest import tree_bytes
from parity_tests.test_cli import jaxnet

RESNET = [
    "--model",
    "resnet",
    "--size",
    "channels=4,8,8",
    "blocks=1",
    "--train-limit",
    "64",
    "--test-limit",
    "128",
    "--batch-size",
    "16",
]  # fmt: skip  (4 steps an epoch)
GPT = ["--model", "gpt", "--size", "block_size=16", "n_layer=1", "n_head=2", "n_embd=16",
       "--epoch-steps", "3", "--batch-size", "8", "--test-limit", "64"]  # fmt: skip
K = 16  # the project's factor over a measured floor (docs/calibration.md)


def test_every_family_declares_what_jaxnet_needs():
    """A family is its config class, its recipe and data, and two files mirrored by name."""
    for name, family in registry.FAMILIES.items():
        config = family.config()
        assert config.kind == name and family.recipes and family.data in (registry.IMAGES, registry.TEXT)
        assert config.loss in ("cross_entropy", "nll") and isinstance(config.dropouts, dict)
        assert registry.model_from_json(config.to_json()) == config
        state = checkpoint.init_state_dict(config, 0)
        assert registry.infer_config(state) == config or name == "gpt"  # n_head is not in a state dict
        checkpoint.validate_state_dict(state, config)


def test_the_resnet_trains_in_torch_and_evaluates_alike_in_jax(tmp_path, capsys):
    """A torch-trained checkpoint (BatchNorm's running statistics and counters in it) is
    evaluated by both backends alike: the same predictions but at near-ties, and losses within
    K times the float32 error torch itself makes on this checkpoint (its float64 eval)."""
    ckpt = tmp_path / "torch"
    out = jaxnet(capsys, "train", *RESNET, "--backend", "torch", "--epochs", "1", "--save", ckpt)
    assert "Test Error" in out
    saved = checkpoint.load(ckpt)
    assert saved.config.kind == "resnet" and saved.step == 4
    assert int(saved.model["bn1.num_batches_tracked"]) == 4  # train mode in every step
    assert not np.all(saved.model["bn1.running_var"] == 1)  # the statistics moved
    evals = {b: json.loads(jaxnet(capsys, "eval", "--checkpoint", ckpt, "--backend", b, "--json",
                                  "--test-limit", "128")) for b in ("torch", "jax")}  # fmt: skip
    wide = {
        k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in saved.model.items()
    }
    t64 = get_backend("torch", saved.config, dtype="float64", state=wide)
    x, y = _test(128)
    floor = abs(t64.evaluate(x.astype(np.float64), y, 64)[1] - evals["torch"]["avg_loss"])
    floor = max(floor, UNIT_ROUNDOFF["float32"] * evals["torch"]["avg_loss"])
    assert abs(evals["jax"]["avg_loss"] - evals["torch"]["avg_loss"]) <= K * floor
    logits = {b: get_backend(b, saved.config, state=saved.model).predict(x) for b in ("torch", "jax")}
    differ = np.flatnonzero(logits["torch"].argmax(1) != logits["jax"].argmax(1))
    top2 = np.sort(t64.predict(x.astype(np.float64))[differ], axis=1)[:, -2:]
    gap = K * np.abs(logits["torch"] - t64.predict(x.astype(np.float64))).max()  # float32's own error there
    assert np.all(top2[:, 1] - top2[:, 0] <= 2 * gap), differ
    assert "Predicted" in jaxnet(capsys, "predict", "--checkpoint", ckpt, "--backend", "jax")


def _test(n: int) -> tuple[np.ndarray, np.ndarray]:
    from jaxnet import data

    test = data.load().test
    return test[:n].float_images(), test.labels[:n]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_resnet_run_stopped_and_resumed_is_bit_identical(tmp_path, capsys, monkeypatch, backend):
    """Ctrl-C after epoch 1 (saved at the end of the next chunk), then --resume: the final
    checkpoint (weights, running statistics, counters, momentum) byte for byte the
    uninterrupted run's; augmentation and batch order come from (seed, step) and (seed, epoch)."""
    args = ["train", *RESNET, "--backend", backend, "--epochs", "3", "--seed", "3"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    jaxnet(capsys, *args, "--save", reference)
    report = tasks.ImageTask.report

    def report_then_ctrl_c(self, correct, loss):
        signal.raise_signal(signal.SIGINT)  # the run's handler sets its flag; the loop stops after a chunk
        return report(self, correct, loss)

    monkeypatch.setattr(tasks.ImageTask, "report", report_then_ctrl_c)
    assert main([*args, "--save", str(stopped)]) == 130
    monkeypatch.setattr(tasks.ImageTask, "report", report)
    assert checkpoint.load(stopped).step == 8  # epoch 2's steps done, epoch 3's not
    jaxnet(
        capsys, "train", "--resume", stopped, "--backend", backend, "--save", stopped, "--test-limit", "128"
    )
    assert tree_bytes(stopped) == tree_bytes(reference)


def test_the_gpt_trains_and_both_backends_generate(tmp_path, capsys):
    ckpt = tmp_path / "gpt"
    metrics = tmp_path / "gpt.jsonl"
    out = jaxnet(
        capsys, "train", *GPT, "--backend", "jax", "--epochs", "2", "--save", ckpt, "--metrics", metrics
    )
    assert out.count("nats/char") == 2
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6] and all(r["val_nats_per_char"] > 0 for r in rows)
    saved = checkpoint.load(ckpt)
    assert (saved.config.kind, saved.config.n_embd, saved.step) == ("gpt", 16, 6)
    assert "lm_head.weight" not in saved.model  # tied: the one tensor is wte.weight
    texts = {
        b: jaxnet(
            capsys, "generate", "--checkpoint", ckpt, "--prompt", "The ", "--tokens", "12", "--backend", b
        )
        for b in ("torch", "jax")
    }
    for text in texts.values():
        assert text.startswith("The ") and len(text) == 4 + 12 + 1  # and print's newline
    evals = {b: json.loads(jaxnet(capsys, "eval", "--checkpoint", ckpt, "--backend", b, "--json", "--test-limit", "64"))
             for b in ("torch", "jax")}  # fmt: skip
    # 16-wide, one block: each logit sums 16 to 64 float32 products a few times over (K times u per term)
    bound = K * 64 * UNIT_ROUNDOFF["float32"] * evals["torch"]["avg_loss"]
    assert abs(evals["jax"]["avg_loss"] - rows[-1]["val_nats_per_char"]) <= bound
    assert abs(evals["torch"]["avg_loss"] - rows[-1]["val_nats_per_char"]) <= bound


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "vgg"], "invalid choice: 'vgg'"),
        (["train", "--model", "resnet", "--size", "depth=3"], "--size 'depth=3': expected FIELD=VALUE"),
        (["train", "--model", "resnet", "--size", "blocks=two"], "'two' is not a int"),
        (["train", "--model", "resnet", "--hidden", "8"], "--hidden sizes the MLP"),
        (["train", "--model", "resnet", "--epoch-steps", "5"], "--epoch-steps is for a text stream"),
        (["train", "--model", "gpt", "--train-limit", "64"], "--train-limit counts images"),
        (["train", "--model", "gpt", "--size", "n_embd=10", "n_head=4"], "n_embd a multiple of n_head"),
        (["train", "--model", "resnet", "--devices", "2"], "trains on one device"),
    ],
)
def test_bad_family_input_is_one_line(args, message, capsys):
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's errors exit; the others return the status
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_a_checkpoint_of_the_wrong_family_is_one_line(tmp_path, capsys):
    config = registry.family("gpt").config(block_size=8, n_layer=1, n_head=1, n_embd=8)
    path = tmp_path / "gpt"
    checkpoint.save(path, checkpoint.Checkpoint(checkpoint.init_state_dict(config, 0), config))
    assert main(["predict", "--checkpoint", str(path)]) == 2
    assert "a gpt checkpoint; predict classifies images" in capsys.readouterr().err
    resnet = registry.family("resnet").config(channels=(2, 2, 2), blocks=1)
    other = tmp_path / "resnet"
    checkpoint.save(other, checkpoint.Checkpoint(checkpoint.init_state_dict(resnet, 0), resnet))
    assert main(["generate", "--checkpoint", str(other), "--prompt", "x"]) == 2
    assert "generate needs a text model" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(path), "--prompt", "\u00e9"]) == 2
    assert "not in the corpus vocabulary" in capsys.readouterr().err
    shuffled = dataclasses.replace(config, vocab_size=50)
    bad = tmp_path / "vocab"
    checkpoint.save(bad, checkpoint.Checkpoint(checkpoint.init_state_dict(shuffled, 0), shuffled))
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "the corpus has 96 characters" in capsys.readouterr().err


def test_jax_dropout_in_training_is_drawn_from_the_step_key():
    """The port's ``nnx.Dropout`` modules hold no RNG; in a training step each draws its mask
    from the step's key folded with its place: reproducible from the key, new for another."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxnet import capture

    class Two(nnx.Module):
        def __init__(self):
            self.a, self.b = nnx.Dropout(0.5), nnx.Dropout(0.25)

        def __call__(self, x):
            return self.a(x), self.b(x)

    model, x = Two(), jnp.ones((64, 64))
    model.eval()
    run = lambda key: capture.forward(model, x, key=key)  # noqa: E731
    first, again, other = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    assert all(jnp.array_equal(p, q) for p, q in zip(first, again, strict=True))
    assert not jnp.array_equal(first[0], other[0])
    assert set(np.unique(np.asarray(first[0]))) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    kept = [float(jnp.mean(out != 0)) for out in first]
    # 4,096 Bernoulli draws each: the kept fraction within 5 standard deviations (<= 0.04) of 1 - p
    assert abs(kept[0] - 0.5) < 0.04 and abs(kept[1] - 0.75) < 0.04
    assert jnp.array_equal(capture.forward(model, x)[0], x)  # no key: eval, off
