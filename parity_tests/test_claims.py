"""What the project claims about itself, checked: version floors, every flag explained."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jaxnet import versions

ROOT = Path(__file__).resolve().parents[1]


def _floors_in_pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["torch"]]
    return {
        m[1]: m[2] for s in specs if (m := re.fullmatch(r"([\w-]+)>=([\w.]+)", s)) and m[1] in versions.FLOORS
    }


def test_the_floors_are_pyprojects_and_installed_versions_meet_them():
    assert _floors_in_pyproject() == versions.FLOORS
    assert versions.too_old(versions.installed()) == []


def test_versions_compare_as_numbers_not_strings():
    assert versions.parse("2.13.0+cpu") == (2, 13, 0) and versions.parse("0.12.8rc1") == (0, 12, 8)
    old = {"jax": "0.9.9", "flax": "0.12.10", "optax": "0.2.8", "torch": None}  # 0.12.10 > 0.12.8
    assert versions.too_old(old) == ["jax 0.9.9 (needs >= 0.10.2)"]


def test_an_old_jax_is_one_line_naming_what_is_needed(tmp_path):
    """A real interpreter that finds jax 0.5.0's metadata first on its path (what pip leaves
    behind for an old install): the command stops before any framework loads."""
    dist = tmp_path / "jax-0.5.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jax\nVersion: 0.5.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-m", "jaxnet", "plot", "absent.jsonl", "--output", str(tmp_path / "p.png")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "jaxnet: error: jax 0.5.0 (needs >= 0.10.2): upgrade with pip install -c constraints.txt "
        "-e '.[torch]' (or make, which does)"
    ]


def test_the_calibrators_flags_are_explained():
    """As ``jaxnet``'s commands' (test_cli): every flag has help, and a default is shown."""
    from jaxnet.parity import calibrate

    for action in calibrate.parser()._actions:
        if action.help == argparse.SUPPRESS or action.dest == "help":
            continue
        assert action.help and action.help.strip(), f"calibrate {action.option_strings}: no help"
        if action.default is not None:
            assert "default" in action.help, f"calibrate {action.option_strings}: default not shown"


def test_every_environment_variable_jaxnet_reads_is_in_the_readme():
    """Every ``os.environ`` name in jaxnet's code (and every ``JAXNET_*`` string) is listed."""
    code = "\n".join(p.read_text() for p in (ROOT / "jaxnet").rglob("*.py"))
    read = set(re.findall(r"\bJAXNET_[A-Z_]+\b", code))
    read |= set(re.findall(r"environ(?:\.get\(|\[)\"([A-Z_]+)\"", code))
    read |= set(re.findall(r"\"([A-Z_]+)\" (?:not )?in os\.environ", code))
    readme = (ROOT / "README.md").read_text()
    assert {"JAXNET_DATA", "JAXNET_CACHE", "JAXNET_MIRROR", "JAXNET_COMPILE_CACHE"} <= read  # the scan works
    assert sorted(v for v in read if f"`{v}`" not in readme) == []


def test_the_readmes_figures_are_those_the_saved_reports_measured():
    from jaxnet import docs_check

    assert docs_check.problems() == []


def test_the_recorded_sizes_page_is_its_json_rendered():
    """docs/recorded-cpu.md (the README's tables' source) is what its JSON renders to."""
    import json

    from parity_tests import recorded_sizes

    saved = json.loads((ROOT / "docs" / "recorded-cpu.json").read_text())
    assert recorded_sizes.markdown(saved) == (ROOT / "docs" / "recorded-cpu.md").read_text()


@pytest.mark.parametrize(
    ("quoted", "edited", "named"),
    [
        ("-1.1e-8 in torch", "-2.6e-7 in torch", "pre-activation -2.6e-7"),  # the stale figure of issue 20
        ("182/182 rows pass", "181/182 rows pass", "181/182"),
        (
            "rows in 140 s ([docs/parity-cpu-avx2",
            "rows in 347 s ([docs/parity-cpu-avx2",
            "parity-cpu-avx2.json",
        ),
        ("(gap 7.4e-3", "(gap 7.5e-3", "gap 7.5e-3"),
        ("There are twelve.", "There are eleven.", "the code has"),
        ("over 8 seeds", "over 12 seeds", "calibration seeds"),
        (
            "| 1 | 87.8%, 0.3361 | 87.9%, 0.3321 |",
            "| 1 | 88.0%, 0.3344 | 87.9%, 0.3333 |",
            "train-cnn-cpu.md",
        ),
        ("reach at most 5.0 times their floor", "reach at most 4.0 times their floor", "K paragraph"),
        ("rows sit at 4.6 times K", "rows sit at 5.6 times K", "K paragraph"),
        ("(7098 / 10000) | 0.779832", "(7099 / 10000) | 0.779832", "train-tutorial"),
        ("(90.35% after epoch 20", "(90.51% after epoch 20", "README AdamW"),
        ("| mlp | 669,706 | sgd |", "| mlp | 669,706 | adam |", "README recorded references"),
        ("| 20 | 93.98% | 93.83%", "| 20 | 93.98% | 93.88%", "generated block of docs/train-gpu.md"),
        ("(torch 93.98%, jax 93.83%", "(torch 93.98%, jax 93.88%", "93.88"),
        (
            "24, 0.11 (adadelta-step: optimizer.fc1.weight.acc_delta)",
            "24, 0.12 (adadelta-step: optimizer.fc1.weight.acc_delta)",
            "parity-sections-cnn.md",
        ),
        ("| running bn1.running_var | 8.12 |", "| running bn1.running_var | 8.13 |", "pitfall"),
        ("| gpt | 3.85 | 0 |", "| gpt | 3.58 | 0 |", "README calibration table: gpt"),
        (
            "  | gpt | 3.85 | 0 | [docs/calibration-ports-cpu.md](docs/calibration-ports-cpu.md) |\n",
            "",
            "models",
        ),
    ],
)
def test_the_figure_check_fails_on_a_hand_edited_figure(quoted, edited, named):
    from jaxnet import docs_check

    readme = (ROOT / "README.md").read_text()
    assert quoted in readme
    found = docs_check.problems(readme.replace(quoted, edited))
    assert found and all(named in line for line in found), found


def test_the_figure_check_fails_on_a_generated_table_edited_in_both_places(tmp_path):
    """A table edited by hand in the README and in its docs/ file alike is still caught: the
    file is not what its script prints from the saved report."""
    import shutil

    from jaxnet import docs_check

    docs = shutil.copytree(ROOT / "docs", tmp_path / "docs")
    quoted, edited = "10, 0.13 (linear_relu_stack.3)", "10, 0.12 (linear_relu_stack.3)"
    table = docs / "parity-sections-mlp.md"
    assert quoted in table.read_text()
    table.write_text(table.read_text().replace(quoted, edited))
    readme = (ROOT / "README.md").read_text().replace(quoted, edited)
    found = docs_check.problems(readme, docs)
    assert found == [
        "docs/parity-sections-mlp.md: not what docs/scripts/parity_tables.py prints from the saved runs"
    ]


PLACEHOLDERS = {r"\{(\w+),[\w,]+\}": r"\1", r"--backend B\b": "--backend jax", r"\bPATH\b": "runs/checkpoint",
                r"\b[NP]\b": "2", r"\b(NAME|FAULT)\b": "sum-loss"}  # fmt: skip


def _readme_commands() -> list[str]:
    """Every ``jaxnet`` command line of the README: its sh blocks, and its inline commands
    with placeholders filled in (``B``: jax, ``N``: 2, ``{jax,torch}``: jax, ...); inline
    ones with optional parts (``[...]``, ``...``) and bare command names are left out."""
    readme = (ROOT / "README.md").read_text()
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", readme, re.S)
        for line in block.splitlines()
        if re.search(r"(^|-m )jaxnet ", line)
    ]
    for span in re.findall(r"`(jaxnet [a-z][^`]*)`", readme):
        span = " ".join(span.split())
        if re.search(r"\[|\.\.\.|\\\|", span) or len(span.split()) < 3:
            continue
        for pattern, value in PLACEHOLDERS.items():
            span = re.sub(pattern, value, span)
        lines.append(span)
    return sorted(set(lines))


def test_every_command_the_readme_shows_is_one_the_cli_accepts(capsys):
    """No stale flag or choice: each line parses with the command line's own parser."""
    from jaxnet.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 20 and any(c.startswith("torchrun") for c in commands)  # the scan works
    parser = build_parser()
    for command in commands:
        words = shlex.split(command)
        args = words[words.index("jaxnet") + 1 :]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"README: {command}: {capsys.readouterr().err.strip().splitlines()[-1]}")
