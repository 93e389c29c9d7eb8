"""Recorded torch references: record where torch is, check the port where it is not.

A BatchNorm pair (train-mode steps, running statistics, a counter) is recorded once on real
Fashion-MNIST crops; the recorded check must give the live comparison's rows and verdicts, in
a process where ``import torch`` fails, also under another arithmetic order (XLA's thread
pool instead of the suite's one thread), and must still catch a planted pitfall at the same row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flax import nnx

from jaxnet import parity
from jaxnet.config import OptimConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity import bundle as bundle_format
from jaxnet.testing import assert_parity
from parity_tests.conftest import threaded
from parity_tests.port_models import NNXBN, TorchBN
from parity_tests.test_imports import BLOCK_TORCH

ROOT = Path(__file__).resolve().parent.parent
# float32 alone: the float64 rows run the same code paths (test_port_engine holds them live)
ARGS = {
    "channels_last": True,
    "steps": 2,
    "optimizer": OptimConfig(name="sgd", lr=0.1, momentum=0.9),
    "dtypes": ("float32",),
}


@pytest.fixture(scope="module")
def data(fmnist):
    return fmnist.train[:8].float_images()[:, :, 8:20, 8:20].copy(), fmnist.train.labels[:8]


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(0)
    return TorchBN()


@pytest.fixture(scope="module")
def bundle(torch_net, data, tmp_path_factory):
    return parity.record(torch_net, *data, tmp_path_factory.mktemp("ref") / "bn", **ARGS)


def verdicts(report) -> list:
    return [[r.section, r.quantity, r.dtype, r.passed] for r in report.rows]


CHECK = """
import json, sys
from flax import nnx
from jaxnet import parity
from parity_tests.nnx_ports import NNXBN
out = {}
for name, kw in (("correct", {}), ("momentum 0.99", {"momentum": 0.99})):
    r = parity.compare(sys.argv[1], NNXBN(rngs=nnx.Rngs(0), **kw))
    out[name] = {"rows": [[x.section, x.quantity, x.dtype, x.passed] for x in r.rows],
                 "first": r.environment["first difference"], "env": r.environment}
out["torch loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_recorded_check_without_torch_gives_the_live_verdicts(bundle, torch_net, data):
    """Same rows and verdicts as live, correct and with a planted fault, torch unimportable,
    on another arithmetic order than the recording's (XLA's thread pool, not the suite's one
    thread: conftest)."""
    env = threaded({**os.environ, "PYTHONPATH": str(ROOT)})
    code = BLOCK_TORCH + CHECK
    result = subprocess.run(
        [sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["torch loaded"] is False
    live = parity.compare(torch_net, NNXBN(rngs=nnx.Rngs(0)), *data, **ARGS)
    assert live.passed and got["correct"]["rows"] == verdicts(live)  # no false alarm
    assert got["correct"]["first"] == live.environment["first difference"]
    faulty = parity.compare(torch_net, NNXBN(rngs=nnx.Rngs(0), momentum=0.99), *data, **ARGS)
    assert got["momentum 0.99"]["rows"] == verdicts(faulty)  # still caught, at the same rows
    assert got["momentum 0.99"]["first"] == faulty.environment["first difference"]
    assert got["momentum 0.99"]["first"].startswith("running bn1.running_mean")
    assert "recorded on" in got["correct"]["env"]


def test_assert_parity_reads_like_assert_close(bundle, tmp_path):
    assert assert_parity(bundle, NNXBN(rngs=nnx.Rngs(0))).passed
    with pytest.raises(AssertionError) as err:
        assert_parity(bundle, NNXBN(rngs=nnx.Rngs(0), momentum=0.99), report_dir=tmp_path)
    message = str(err.value)
    assert "First difference: forward (train mode) / running bn1.running_mean (float32)" in message
    assert "Diagnosis: running bn1.running_mean (float32): the running statistics" in message
    assert "| err | floor | bound | ratio" in message
    full = Path(message.rsplit("Full report: ", 1)[1].strip())
    assert full.parent == tmp_path and json.loads(full.read_text())["rows"]


def test_a_damaged_or_foreign_bundle_is_a_one_line_error(bundle, tmp_path):
    import shutil

    with pytest.raises(JaxnetError, match="not a recorded reference"):
        parity.compare(tmp_path / "nothing", NNXBN(rngs=nnx.Rngs(0)))
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    index = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**index, "format": 99}))
    with pytest.raises(JaxnetError, match=f"format 99, this jaxnet reads format {bundle_format.FORMAT}"):
        parity.compare(copy, NNXBN(rngs=nnx.Rngs(0)))
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(JaxnetError, match="damaged recorded reference"):
        parity.compare(copy, NNXBN(rngs=nnx.Rngs(0)))
    (copy / "bundle.json").write_text(json.dumps(index))
    (copy / "answers.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(JaxnetError, match="damaged recorded reference"):
        parity.compare(copy, NNXBN(rngs=nnx.Rngs(0)))


def test_an_array_answering_several_queries_is_stored_once_and_read_only(tmp_path):
    import numpy as np
    from safetensors.numpy import load_file

    from jaxnet.parity import bundle as store

    w = np.arange(6.0).reshape(2, 3)
    answers = {"q1": {"w": w, "step": np.int64(1)}, "q2": (w.copy(), w.astype(np.float32)), "q3": w.T.copy()}
    path = store.save(tmp_path / "b", {"note": "x"}, answers)
    assert len(load_file(path / store.ARRAYS)) == 4  # w once; int64 1, float32 w, w.T on their own
    _, got = store.load(path)
    assert got["q1"]["w"] is got["q2"][0] and got["q2"][1].dtype == np.float32
    assert np.array_equal(got["q3"], w.T) and got["q1"]["step"] == 1 and got["q1"]["step"].shape == ()
    with pytest.raises(ValueError, match="read-only"):
        got["q1"]["w"][0, 0] = 1.0
