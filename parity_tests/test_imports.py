"""The import rules: each backend is loaded only when asked for, and imports run one way.

- ``torchref`` imports neither jax nor jaxnet;
- a torch run never starts JAX, a JAX run never loads torch (fresh processes, since the
  subject is what a process has imported);
- jaxnet works without torch installed, and asking for torch then is a clear error;
- jaxnet's modules import each other without cycles.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import jaxnet

BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test", name="torch")
sys.meta_path.insert(0, Block())
"""
FRAMEWORKS = ("jax", "jaxlib", "flax", "optax", "torch")


def _run(code: str, **env: str | None) -> subprocess.CompletedProcess:
    """``code`` in a fresh python; ``env`` overrides this process's variables (None unsets one)."""
    cmd = [sys.executable, "-c", code]
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=merged)


def _loaded(code: str, **env: str | None) -> set[str]:
    """The frameworks a fresh process has imported after running ``code``."""
    probe = (
        code + f"\nimport sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r}))"
    )
    result = _run(probe, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def test_torchref_imports_neither_jax_nor_jaxnet():
    result = _run(
        "import sys, torchref; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxnet', 'flax')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_torch_run_never_starts_jax_and_a_jax_run_never_loads_torch(tmp_path):
    train = "from jaxnet.cli import main\nassert main(['train', '--backend', '{b}', '--epochs', '1', '--train-limit', '128', '--save', r'{p}']) == 0"
    assert _loaded(train.format(b="torch", p=tmp_path / "t")) == {"torch"}
    # The command line keeps JAX's compiled programs in the user cache (the suite turns it off).
    cache = tmp_path / "xdg"
    run_jax = _loaded(  # without the suite's own cache (conftest), as a user's shell has none
        train.format(b="jax", p=tmp_path / "j"),
        JAXNET_COMPILE_CACHE="1",
        XDG_CACHE_HOME=str(cache),
        JAX_COMPILATION_CACHE_DIR=None,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=None,
    )
    assert run_jax == {"jax", "jaxlib", "flax", "optax"}
    assert any((cache / "jaxnet" / "xla").iterdir())


def test_jaxnet_trains_and_evaluates_without_torch(tmp_path):
    code = (
        BLOCK_TORCH
        + f"""
import jaxnet, jaxnet.backends, jaxnet.run, jaxnet.parity, jaxnet.bench, jaxnet.cli
from jaxnet.cli import main
assert main(["train", "--epochs", "1", "--train-limit", "640", "--save", r"{tmp_path / "c"}"]) == 0
assert main(["eval", "--checkpoint", r"{tmp_path / "c"}", "--json"]) == 0
assert "torch" not in sys.modules
"""
    )
    result = _run(code, JAX_DISABLE_MOST_OPTIMIZATIONS="0", XLA_FLAGS=None)  # XLA as users run it (conftest)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"total": 10000' in result.stdout


def test_asking_for_torch_without_it_is_a_clear_error(tmp_path):
    import torch

    import torchref

    torch.save(torchref.NeuralNetwork().state_dict(), tmp_path / "model.pth")
    code = (
        BLOCK_TORCH
        + f"""
from jaxnet.backends import get_backend
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
        "import sys, jaxnet; assert 'jax' not in sys.modules and 'torch' not in sys.modules; "
        "print(jaxnet.ModelConfig().param_shapes()['linear_relu_stack.0.weight'], jaxnet.CLASS_NAMES[9])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(512, 784) Ankle boot"


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
    }
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            heavy = [n for n in names if n.split(".")[0] in FRAMEWORKS]
            assert not heavy or str(path.relative_to(root)) in allowed, (path, heavy)
