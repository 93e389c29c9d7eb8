"""``jaxnet parity record`` and ``jaxnet parity check`` as a user runs them: their own package.

A user's package (written into a temporary directory, the current directory of the commands)
holds a small torch MLP, its NNX port, a port with a planted bug and the data. ``record``
runs in-process (torch is here); ``check`` runs in a process where ``import torch`` fails,
passes the port with one line, and fails the planted bug with assert_parity's message. Bad
specs and bad bundles are one-line errors.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jaxnet.cli import main
from jaxnet.parity.bundle import FORMAT
from parity_tests.test_imports import BLOCK_TORCH

ROOT = Path(__file__).resolve().parent.parent

TORCH_SIDE = """
import torch
from torch import nn

from jaxnet import data
from jaxnet.config import OptimConfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def batch():  # 8 real images' 4x4 centre crops, flattened
    train = data.load().train
    return train[:8].float_images()[:, 0, 12:16, 12:16].reshape(8, 16), train.labels[:8]


OPTIONS = {"steps": 2, "dtypes": ("float32",), "optimizer": OptimConfig(name="sgd", lr=0.1, momentum=0.9)}
"""

PORT = """
import jax
from flax import nnx


class Port(nnx.Module):
    def __init__(self, act=jax.nn.relu):
        init = nnx.initializers.zeros_init()  # torch's weights replace them: no random init to compile
        self.fc1 = nnx.Linear(16, 8, kernel_init=init, rngs=nnx.Rngs(0))
        self.fc2 = nnx.Linear(8, 10, kernel_init=init, rngs=nnx.Rngs(0))
        self.act = act

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


def faulty():  # a porting bug: GELU where torch has ReLU
    return Port(act=jax.nn.gelu)


def needs_args(width):
    return Port()


NOT_A_MODULE = [1, 2]
"""

CHECK = """
import contextlib, io, json
from jaxnet.cli import main
out = {}
for name, spec in (("port", "mypkg.port:Port"), ("faulty", "mypkg.port:faulty")):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["parity", "check", "ref", "--module", spec, "--report-dir", "reports"])
    out[name] = [code, stdout.getvalue(), stderr.getvalue()]
out["torch loaded"] = "torch" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A user's project directory holding ``mypkg`` (the ``recorded`` fixture adds the bundle ``ref``)."""
    where = tmp_path_factory.mktemp("project")
    (where / "mypkg").mkdir()
    (where / "mypkg" / "__init__.py").write_text("")
    (where / "mypkg" / "torch_side.py").write_text(TORCH_SIDE)
    (where / "mypkg" / "port.py").write_text(PORT)
    return where


def jaxnet(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def recorded(project):
    """``jaxnet parity record`` run in-process from the project directory: the bundle, and what it printed."""
    cwd, path, printed = os.getcwd(), list(sys.path), io.StringIO()
    os.chdir(project)
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["parity", "record", "--module", "mypkg.torch_side:Net", "--inputs", "mypkg.torch_side:batch",
                         "--options", "mypkg.torch_side:OPTIONS", "--out", "ref"])  # fmt: skip
    finally:
        os.chdir(cwd)
        sys.path[:] = path  # record put the project directory on it, as for a user's cwd
    assert code == 0
    return project / "ref", printed.getvalue()


def test_record_then_check_where_torch_cannot_be_imported(recorded, project):
    printed = recorded[1]
    assert printed.startswith("recorded ref: ") and printed.endswith(" MB\n") and "torch Net" in printed
    assert json.loads((recorded[0] / "bundle.json").read_text())["format"] == FORMAT
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH + CHECK], cwd=project, capture_output=True,
                            text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["torch loaded"] is False
    code, out, err = got["port"]
    assert code == 0, err
    lines = out.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("parity check ref: ")
        and "rows within their bounds" in lines[0]
    )
    assert "recorded on " in lines[0]
    code, out, err = got["faulty"]
    assert code == 1 and not out
    assert err.startswith("Parity failed: ")
    assert "First difference: forward" in err and "Diagnosis: " in err
    report = Path(err.rsplit("Full report: ", 1)[1].strip())
    assert report.parent == project / "reports" and json.loads(report.read_text())["rows"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("check", "{ref}", "--module", "mypkg.port"), "expected PKG.MODULE:NAME"),
        (("check", "{ref}", "--module", "nosuchpkg.port:Port"), "cannot import nosuchpkg.port (ModuleNotFoundError"),
        (("check", "{ref}", "--module", "mypkg.port:Nothing"), "mypkg.port has no 'Nothing'"),
        (("check", "{ref}", "--module", "mypkg.port:needs_args"), "needs_args needs arguments"),
        (("check", "{ref}", "--module", "mypkg.port:NOT_A_MODULE"), "a list, not a flax.nnx.Module"),
        (("check", "{ref}", "--module", "mypkg.port:Port", "--rules", "mypkg.port:NOT_A_MODULE"), "not a dict"),
        (("check", "{tmp}/nothing", "--module", "mypkg.port:Port"), "not a recorded reference"),
        (("check", "{version}", "--module", "mypkg.port:Port"), f"format 99, this jaxnet reads format {FORMAT}"),
        (("check", "{damaged}", "--module", "mypkg.port:Port"), "damaged recorded reference"),
        (("record", "--module", "mypkg.port:Port", "--inputs", "mypkg.torch_side:batch", "--out", "{tmp}/r"),
         "a Port, not a torch.nn.Module"),
        (("record", "--module", "mypkg.torch_side:Net", "--inputs", "mypkg.port:Port", "--out", "{tmp}/r"),
         "not a pair (inputs, targets)"),
        (("record", "--module", "mypkg.torch_side:Net", "--inputs", "mypkg.torch_side:batch", "--options",
          "mypkg.port:NOT_A_MODULE", "--out", "{tmp}/r"), "a list, not a dict of batch_size"),
    ],
)  # fmt: skip
def test_bad_specs_and_bundles_are_one_line_errors(
    args, message, project, recorded, tmp_path, capsys, monkeypatch
):
    recorded = recorded[0]
    for name, change in (("version", lambda i: {**i, "format": 99}), ("damaged", None)):
        copy = tmp_path / name
        shutil.copytree(recorded, copy)
        index = json.loads((copy / "bundle.json").read_text())
        (copy / "bundle.json").write_text(json.dumps(change(index)) if change else "{not json")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))
    fill = {
        "ref": recorded,
        "tmp": tmp_path,
        "version": tmp_path / "version",
        "damaged": tmp_path / "damaged",
    }
    code, out, err = jaxnet(capsys, "parity", *(a.format(**fill) for a in args))
    assert code == 2 and not out
    assert err.startswith("jaxnet: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "r").exists()
