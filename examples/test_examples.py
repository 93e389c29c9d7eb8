"""Every example runs and asserts its claims; the generated page is up to date."""

from __future__ import annotations

import pytest

from examples import build

OUTPUTS: dict[str, str] = {}


@pytest.mark.parametrize("name", build.examples())
def test_example_runs_and_agrees(name):
    OUTPUTS[name] = build.run(name)  # main() asserts that both frameworks agree
    assert OUTPUTS[name].strip()


def test_page_is_up_to_date():
    outputs = {name: OUTPUTS.get(name) or build.run(name) for name in build.examples()}
    assert build.PAGE.read_text() == build.render(outputs), "run: python -m examples.build"


def test_there_are_ten_topics():
    assert len(build.examples()) == 10
