"""A resume is all or nothing: a damaged or mixed-up checkpoint directory is refused with one
line naming the part, or resumed bit-identically, never half-resumed.

Tiny real runs (torch, 128 images, 2 steps an epoch) are saved, then one file of one of them is
mutated: removed, truncated, one bit flipped, or swapped with the same file of another run (an
identical twin, another seed, plain SGD, the CNN). ``jaxnet train --resume`` of the result must
either exit 2 with ``jaxnet: error: <path of a part>: ...`` and write nothing, or write the very
bytes the resume of the untouched checkpoint writes. ``--hypothesis-show-statistics`` prints the
counts of each outcome (the ``event`` lines).
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jaxnet import checkpoint, data, run
from jaxnet.backends import get_backend
from jaxnet.checkpoint import MODEL, OPTIMIZER, STATE
from jaxnet.cli import main
from jaxnet.config import CNNConfig, ModelConfig, OptimConfig, TrainConfig
from parity_tests.conftest import tree_bytes

PARTS = (MODEL, OPTIMIZER, STATE)
MLP = ModelConfig(hidden=(8,))
CNN = CNNConfig(channels=(2, 2), hidden=8)  # examples/mnist's layers, tiny, so an epoch is cheap
RUNS = {  # name: (model, optimizer, seed)
    "adam": (MLP, OptimConfig(name="adam"), 0),
    "twin": (MLP, OptimConfig(name="adam"), 0),  # the same run again: byte-identical files
    "other-seed": (MLP, OptimConfig(name="adam"), 1),
    "sgd": (MLP, OptimConfig(), 0),  # keeps no optimizer state: no optimizer.safetensors
    "cnn": (CNN, OptimConfig(name="adadelta", lr=1.0), 0),
}
MUTATED = ("adam", "sgd", "cnn")  # the runs whose directories are damaged


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Each run of RUNS saved after epoch 1 of 2 (evaluated on 64 test images: the checkpoint
    does not depend on them, and the CNN's 10,000 would cost a second)."""
    root = tmp_path_factory.mktemp("runs")
    ds = data.load()
    quick = SimpleNamespace(train=ds.train, test=data.Split(ds.test.images[:64], ds.test.labels[:64]))
    for name, (config, opt, seed) in RUNS.items():
        cfg = TrainConfig(optimizer=opt, epochs=1, seed=seed, train_limit=128)
        backend = get_backend("torch", config, state=checkpoint.init_state_dict(config, seed))
        run.train(backend, quick, cfg, save=root / name, log=lambda _: None, progress=False)
    assert tree_bytes(root / "adam") == tree_bytes(root / "twin")
    assert {n: (root / n / OPTIMIZER).exists() for n in RUNS} == {n: n != "sgd" for n in RUNS}
    return {name: root / name for name in RUNS}


@functools.cache
def _untouched_resume(source: Path) -> dict[str, bytes]:
    """The files the resume of an untouched checkpoint writes (made when first needed)."""
    out = source.with_name(f"{source.name}.resumed")
    code, err = _resume(source, out)
    assert code == 0, err
    return tree_bytes(out)


def _resume(source: Path, out: Path) -> tuple[int, str]:
    """``jaxnet train --resume SOURCE --save OUT --epochs 2`` in torch: status and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--backend", "torch", "--resume", source, "--save", out, "--epochs", "2"])
    return code, err.getvalue()


def _mutate(directory: Path, part: str, kind: str, where: float, donor: Path) -> None:
    path = directory / part
    if kind == "swap":
        if (donor / part).exists():
            shutil.copyfile(donor / part, path)
        else:
            path.unlink(missing_ok=True)
        return
    if not path.exists():
        return  # nothing to damage (plain SGD has no optimizer file)
    if kind == "missing":
        path.unlink()
        return
    blob = bytearray(path.read_bytes())
    if kind == "truncated":
        del blob[int(where * len(blob)) :]
    else:  # one bit flipped
        bit = int(where * 8 * len(blob))
        blob[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(blob))


@settings(
    max_examples=40,
    deadline=None,  # a resume that goes through runs an epoch: its time is not the property
    derandomize=True,  # the same cases on every machine and every run of CI
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # tmp_path is shared on purpose
)
@given(
    target=st.sampled_from(MUTATED),
    part=st.sampled_from(PARTS),
    kind=st.sampled_from(("missing", "truncated", "bit-flip", "swap")),
    where=st.floats(0, 1, exclude_max=True),
    donor=st.sampled_from(tuple(RUNS)),
)
def test_a_mutated_checkpoint_is_refused_or_resumed_bit_identically(
    runs, tmp_path, target, part, kind, where, donor
):
    case = tmp_path / "case"
    shutil.rmtree(case, ignore_errors=True)
    shutil.copytree(runs[target], case)
    _mutate(case, part, kind, where, runs[donor])
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    code, err = _resume(case, out)
    if code == 0:
        assert tree_bytes(out) == _untouched_resume(runs[target]), (part, kind)
        event("bit-identical resume")
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"jaxnet: error: {case}"), err
        assert any(p in lines[0] for p in PARTS), lines[0]  # the part is named
        assert not out.exists()  # nothing written before the refusal
        event("clean error")
    event(f"{kind} {part}")


@pytest.mark.parametrize(
    ("part", "donor", "message"),
    [
        (OPTIMIZER, None, r"optimizer\.safetensors: missing; state\.json names adam at step 2"),
        (OPTIMIZER, "other-seed", r"optimizer\.safetensors: SHA-256 \w+\.\.\., but state\.json records"),
        (OPTIMIZER, "cnn", r"optimizer\.safetensors: adadelta's state, but state\.json names adam"),
        (MODEL, "cnn", r"model\.safetensors: weights of the cnn model, but state\.json names the mlp model"),
        (STATE, "other-seed", r"model\.safetensors: SHA-256 \w+\.\.\., but state\.json records"),
    ],
)
def test_each_refusal_names_the_part_and_why(runs, tmp_path, part, donor, message):
    case = tmp_path / "case"
    shutil.copytree(runs["adam"], case)
    _mutate(case, part, "missing" if donor is None else "swap", 0.0, runs[donor] if donor else case)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(case)


def test_a_library_resume_without_the_optimizer_state_is_refused(runs, fmnist):
    """``run.train(resume=...)`` from a Checkpoint built in code, its Adam state left out: refused
    before a step, not continued with a fresh optimizer."""
    ckpt = checkpoint.load(runs["adam"])
    ckpt.optimizer = {}
    cfg = replace(ckpt.train_config, epochs=2)
    backend = get_backend("torch", ckpt.config, state=ckpt.model)
    with pytest.raises(checkpoint.CheckpointError, match=r"no optimizer state to resume adam at step 2"):
        run.train(backend, fmnist, cfg, resume=ckpt, log=lambda _: None, progress=False)
