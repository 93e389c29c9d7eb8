"""The import rules: torchref never sees jax, and jaxnet works without torch."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torchref_imports_neither_jax_nor_jaxnet():
    result = _run(
        "import sys, torchref; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxnet', 'flax')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_jaxnet_trains_and_evaluates_without_torch(tmp_path):
    code = (
        BLOCK_TORCH
        + f"""
import jaxnet, jaxnet.model, jaxnet.train, jaxnet.backend, jaxnet.run, jaxnet.parity, jaxnet.bench
from jaxnet.cli import main
assert main(["train", "--epochs", "1", "--train-limit", "640", "--save", r"{tmp_path / "c.safetensors"}"]) == 0
assert main(["eval", "--checkpoint", r"{tmp_path / "c.safetensors"}", "--json"]) == 0
assert "torch" not in sys.modules
"""
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"total": 10000' in result.stdout


def test_asking_for_torch_without_it_is_a_clear_error(tmp_path):
    import torch

    import torchref

    torch.save(torchref.NeuralNetwork().state_dict(), tmp_path / "model.pth")
    code = (
        BLOCK_TORCH
        + f"""
from jaxnet.backend import get_backend
from jaxnet.cli import main
from jaxnet.config import ModelConfig
from jaxnet.errors import JaxnetError
try:
    get_backend("torch", ModelConfig())
except JaxnetError as err:
    print(err)
raise SystemExit(main(["eval", "--checkpoint", r"{tmp_path / "model.pth"}"]))
"""
    )
    result = _run(code)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the torch backend needs torch" in result.stdout
    assert "reading .pth files needs torch" in result.stderr


def test_public_api_resolves_lazily():
    result = _run(
        "import sys, jaxnet; assert 'jax' not in sys.modules; "
        "print(jaxnet.ModelConfig().param_shapes()['linear_relu_stack.0.weight'], jaxnet.CLASS_NAMES[9])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(512, 784) Ankle boot"
