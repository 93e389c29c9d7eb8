"""Every example runs and asserts its claims; the generated page is up to date.

The examples run into a temporary folder (their plots land there), so the tests never write
into the tracked tree; ``python -m examples.build`` is what rewrites README.md and images/.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from examples import build

OUTPUTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return tmp_path_factory.mktemp("images")


@pytest.mark.parametrize("name", build.examples())
def test_example_runs_and_agrees(name, images):
    OUTPUTS[name] = build.run(name, images, small=True)  # main() asserts that both frameworks agree
    assert OUTPUTS[name].strip()
    assert not jax.config.jax_enable_x64  # float64 only inside the example's `with jax.enable_x64(True)`
    if build.has_plot(name):
        assert (images / f"{name}.png").stat().st_size > 0


def test_page_is_up_to_date(images):
    outputs = {name: OUTPUTS.get(name) or build.run(name, images, small=True) for name in build.examples()}
    problems = build.differences(build.PAGE.read_text(), build.render(outputs))
    assert not problems, "\n".join([*problems, "run: python -m examples.build"])


def test_page_comparison_allows_one_unit_of_the_last_digit_only():
    def page(output: str, intro: str = "intro") -> str:
        return f"{intro}\n\nOutput:\n\n```text\n{output}\n```\n"

    output = "loss: 2.303  [   64/ 3200]\nw: [0.1057 -1.0e-03]"
    for fresh, same in [
        ("loss: 2.304  [   64/ 3200]\nw: [0.1056 -9.9e-04]", True),  # one unit each: another CPU
        ("loss: 2.303  [   64/ 3201]\nw: [0.1057 -1.0e-03]", True),
        ("loss: 2.305  [   64/ 3200]\nw: [0.1057 -1.0e-03]", False),  # two units: a real change
        ("loss: 2.303  [   64/ 3200]\nw: [0.1057 -1.0e-03 0]", False),  # another count of numbers
        ("Loss: 2.303  [   64/ 3200]\nw: [0.1057 -1.0e-03]", False),  # the text exactly
    ]:
        assert (build.differences(page(output), page(fresh)) == []) == same, fresh
    assert build.differences(page(output, "lr=0.1"), page(output, "lr=0.2"))  # outside outputs: exact


def test_an_example_runs_as_a_script_and_as_a_module():
    """``python examples/e01_....py`` and ``python -m examples.e01_...`` from the repository root."""
    root, name = build.HERE.parent, "e01_tensors_flatten"  # the quickest (~2.5 s, mostly imports)
    commands = [[sys.executable, f"examples/{name}.py"], [sys.executable, "-m", f"examples.{name}"]]
    runs = [
        subprocess.Popen(c, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outputs = []
    for command, run in zip(commands, runs, strict=True):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"{' '.join(command[1:])} failed:\n{err[-2000:]}"
        outputs.append(out)
    assert "Flatten(start_dim=0)" in outputs[0] and outputs[0] == outputs[1]


def test_there_are_fifteen_topics():
    assert len(build.examples()) == 15
