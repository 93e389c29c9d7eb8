"""The import rules: each backend is loaded only when asked for, and imports run one way.

- ``torchref`` imports neither jax nor jaxnet;
- a torch run never starts JAX, a JAX run never loads torch (fresh processes, since the
  subject is what a process has imported);
- jaxnet works without torch installed, and asking for torch then is a clear error;
- jaxnet's modules import each other without cycles.

Two fresh processes hold the checks on what a process imports, each in turn (a process costs
seconds of imports): one that has torch, and one where ``import torch`` fails (every attempt
recorded, caught or not).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxnet

BLOCK_TORCH = """
import sys
class Block:
    tried = []  # every attempt to import torch, whether the importer caught the error or not
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            Block.tried.append(name)
            raise ImportError("torch is blocked in this test", name="torch")
sys.meta_path.insert(0, Block())
"""
FRAMEWORKS = ("jax", "jaxlib", "flax", "optax", "torch")
LOADED = f"sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r})"  # frameworks imported


def _run(code: str, **env: str | None) -> subprocess.CompletedProcess:
    """``code`` in a fresh python; ``env`` overrides this process's variables (None unsets one)."""
    cmd = [sys.executable, "-c", code]
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=merged)


def _results(code: str, **env: str | None) -> dict:
    """The JSON object the last line of ``code``'s output holds (it must succeed)."""
    result = _run(code, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WITH_TORCH = """
import json, sys
import torchref
out = {"torchref": sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxnet', 'flax'))}
from jaxnet.cli import main
assert main(['train', '--backend', 'torch', '--epochs', '1', '--train-limit', '128', '--test-limit', '64',
             '--save', r'SAVE']) == 0
out["torch run"] = LOADED
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def with_torch(tmp_path_factory) -> dict:
    """A process that imports torchref, then trains with ``--backend torch`` (2 steps, evaluated
    on 64 test images: the subject is what the process imports)."""
    save = tmp_path_factory.mktemp("torch") / "t"
    return _results(WITH_TORCH.replace("LOADED", LOADED).replace("SAVE", str(save)))


WITHOUT_TORCH = """
import contextlib, io, json
out = {}
import jaxnet
out["lazy"] = ["jax" in sys.modules, list(Block.tried),
               str(jaxnet.ModelConfig().param_shapes()['linear_relu_stack.0.weight']), jaxnet.CLASS_NAMES[9]]
import jaxnet.backends, jaxnet.run, jaxnet.parity, jaxnet.bench, jaxnet.cli
from jaxnet.cli import main
assert main(["train", "--epochs", "1", "--train-limit", "128", "--hidden", "32", "--test-limit", "64",
             "--save", r"CKPT"]) == 0
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    assert main(["eval", "--checkpoint", r"CKPT", "--json"]) == 0
out["eval"] = json.loads(printed.getvalue())
out["jax run"] = [LOADED, list(Block.tried)]
from jaxnet.backends import get_backend
from jaxnet.config import ModelConfig
from jaxnet.errors import JaxnetError
try:
    get_backend("torch", ModelConfig())
except JaxnetError as err:
    out["get_backend"] = str(err)
printed, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(err):
    out["eval .pth"] = [main(["eval", "--checkpoint", r"PTH"]), printed.getvalue(), err.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory) -> dict:
    """A process where ``import torch`` fails: ``import jaxnet``, a JAX run (train and eval, XLA
    and the compile cache as users have them), then asking for torch. The run is 32 wide and its
    epoch evaluates 64 test images (the eval command all 10,000): what it imports and writes does
    not depend on the sizes. The verified Fashion-MNIST copies are this process's (data.cache_dir),
    as a user's are after a first run, so that the fresh XDG_CACHE_HOME costs no re-verification."""
    import torch

    import torchref
    from jaxnet import data

    where = tmp_path_factory.mktemp("no-torch")
    torch.save(torchref.NeuralNetwork().state_dict(), where / "model.pth")
    code = WITHOUT_TORCH.replace("LOADED", LOADED).replace("CKPT", str(where / "c"))
    code = BLOCK_TORCH + code.replace("PTH", str(where / "model.pth"))
    results = _results(  # without the suite's own cache (conftest), as a user's shell has none
        code,
        JAX_DISABLE_MOST_OPTIMIZATIONS="0",  # XLA as users run it (conftest)
        XLA_FLAGS=None,
        JAXNET_COMPILE_CACHE="1",  # the command line keeps JAX's compiled programs (the suite turns it off)
        XDG_CACHE_HOME=str(where / "xdg"),
        JAXNET_CACHE=str(data.cache_dir()),
        JAX_COMPILATION_CACHE_DIR=None,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None,
    )
    return {**results, "xdg": where / "xdg"}


def test_torchref_imports_neither_jax_nor_jaxnet(with_torch):
    assert with_torch["torchref"] == []


def test_a_torch_run_never_starts_jax_and_a_jax_run_never_loads_torch(with_torch, without_torch):
    assert set(with_torch["torch run"]) == {"torch"}
    loaded, tried = without_torch["jax run"]
    assert set(loaded) == {"jax", "jaxlib", "flax", "optax"} and tried == []  # not even a caught attempt
    assert any((without_torch["xdg"] / "jaxnet" / "xla").iterdir())  # the user's compile cache


def test_jaxnet_trains_and_evaluates_without_torch(without_torch):
    assert without_torch["eval"]["total"] == 10000


def test_asking_for_torch_without_it_is_a_clear_error(without_torch):
    assert "the torch backend needs torch" in without_torch["get_backend"]
    code, _, err = without_torch["eval .pth"]
    assert code == 2 and "Traceback" not in err and "reading .pth files needs torch" in err


def test_public_api_resolves_lazily(without_torch):
    jax_loaded, tried, shape, name = without_torch["lazy"]
    assert not jax_loaded and tried == []  # and torch: blocked, so any attempt is recorded
    assert (shape, name) == ("(512, 784)", "Ankle boot")


def _module_imports() -> dict[str, set[str]]:
    """jaxnet module -> the jaxnet modules it imports at module level (not inside functions)."""
    root = Path(jaxnet.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxnet"):
                # ``from package import submodule`` depends on the submodule
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                          for a in node.names}  # fmt: skip
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("jaxnet")}
        # a module's parent packages load before it by Python's rules: not a design dependency
        graph[name] = {d for d in found if d in files and d != name and not name.startswith(d + ".")}
    return graph


def test_jaxnet_imports_have_no_cycles():
    graph = _module_imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, module]))
        if state.get(module) == 2:
            return
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


def test_only_the_backend_modules_import_a_framework_at_the_top():
    """Everything else imports jax or torch inside the function that needs it."""
    root = Path(jaxnet.__file__).parent
    allowed = {
        "backends/jax.py",
        "backends/torch.py",
        "backends/jax_port.py",
        "backends/torch_port.py",
        "nn.py",
        "model.py",
        "capture.py",
        "train.py",
        "parity/faults.py",
        "models/mlp.py",  # the model families: Flax NNX modules, loaded only when asked for
        "models/cnn.py",
        "models/resnet.py",
        "models/gpt.py",
        "models/state.py",
        "fastconv.py",
        "fastpool.py",
    }
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            heavy = [n for n in names if n.split(".")[0] in FRAMEWORKS]
            assert not heavy or str(path.relative_to(root)) in allowed, (path, heavy)
