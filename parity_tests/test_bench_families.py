"""``jaxnet bench --model resnet|gpt``: the command prints its rows, and bad flags are one-line errors.

Tiny models (the families' configs swapped for small ones), two samples a step, the workers
in-process (the command runs each in its own process; that is plumbing). Every path of
each family trains for real; the step floor is timed on torch's kernels alone (XLA would
compile one program per kernel: ``jaxnet bench`` times both, docs/bench-*-cpu.md). Speed
itself is measured by ``jaxnet bench``, never asserted here.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import replace

import pytest

from jaxnet import bench, registry
from jaxnet.bench import limits, workers
from jaxnet.cli import main
from jaxnet.families import GPTConfig, ResNetConfig

TINY = {
    "resnet": functools.partial(ResNetConfig, channels=(2, 4, 4), blocks=1),
    "gpt": functools.partial(GPTConfig, block_size=8, n_layer=1, n_head=1, n_embd=8),
}


@pytest.fixture
def tiny(monkeypatch):
    """The port families at toy sizes, batch 2; workers and limits in this process."""
    for name, config in TINY.items():
        family = registry.FAMILIES[name]
        monkeypatch.setitem(
            registry.FAMILIES, name, replace(family, config=config, flags=family.flags | {"batch_size": 2})
        )

    def spawn(*args: str, xla_flags: str = "") -> dict:
        if args[0] == "--limits":  # torch's kernels only: XLA would compile one program per kernel
            if args[1] == "jax":
                return {"error": "not timed in the test"}
            models = tuple((registry.family(m).config(), bench.batch_of(m)) for m in args[3:])
            return {"square_2048": 1.0, "kernels": limits.time_kernels("torch", models, 1), "device": "cpu"}
        path, epochs, limit = args[1], int(args[3]), int(args[5])
        flags[path] = xla_flags  # the worker's own XLA flags (its process would read them)
        return workers.run_worker(path, epochs, limit)

    flags: dict[str, str] = {}
    monkeypatch.setattr(bench, "_spawn", spawn)
    return flags


@pytest.mark.parametrize("model", ["resnet", "gpt"])
def test_bench_of_a_port_family_prints_its_rows(model, tiny, tmp_path, capsys):
    out_json = tmp_path / "b.json"
    args = [
        "bench",
        "--model",
        model,
        "--epochs",
        "1",
        "--train-limit",
        "4",
        "--no-startup",
        "--json",
        out_json,
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    paths = bench.MODEL_PATHS[model]
    ynn = (f"{model}-jax-ynn",) if bench.WITH_YNN else ()  # only where jaxnet changes XLA's default
    fast = (f"{model}-jax-fastconv", *ynn) if model == "resnet" else ()
    assert (
        paths
        == tuple(f"{model}-{fw}-{kind}" for fw in ("torch", "jax") for kind in ("plain", "jaxnet")) + fast
    )
    assert all(p in out for p in paths) and f"the {model}'s step floor" in out and "tokens/s" in out
    report = json.loads(out_json.read_text())
    rows = {r["path"]: r for r in report["results"]}
    config, batch = TINY[model](), 2
    floor = report["floors"][model]
    assert floor["step_s"] == sum(
        floor["kernels"][k.name]["seconds"] for k in limits.step_kernels(config, batch)
    )
    for path in paths:
        row = rows[path]
        assert row["samples"] == 4 and row["epoch_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["gflops"] == pytest.approx(
            report["models"][model]["gflop_per_sample"] * 4 / row["epoch_s"]
        )
        assert row["pct_floor"] == 100 * floor["step_s"] * 2 / row["epoch_s"]  # two steps of 2 an epoch
        tokens = row["tokens_per_s"]
        assert tokens is None if model == "resnet" else tokens == 8 * row["samples_per_s"]
    assert rows[f"{model}-torch-plain"]["vs_plain"] == 1.0
    # XLA's default YNNPACK convolutions for the ynn worker alone (jaxnet turns them off elsewhere)
    assert tiny == {p: bench.YNN_DEFAULT if p.endswith("-jax-ynn") else "" for p in paths}
    # the FLOP count is the family's own declaration: per sample, the step's products over the batch
    step = sum(k.flop for k in limits.step_kernels(config, batch))
    assert report["models"][model]["gflop_per_sample"] == step / batch / 1e9


def test_a_ynn_worker_gets_xlas_default_convolutions_and_the_others_jaxnets(monkeypatch):
    """``_spawn`` replaces any YNN choice in the worker's XLA_FLAGS (jaxnet's own included) with
    :data:`bench.YNN_DEFAULT` for a ``*-jax-ynn`` path, keeps every other flag, and leaves the
    other workers' environment as it is."""
    seen = []

    def run(cmd, **kwargs):
        seen.append(kwargs["env"]["XLA_FLAGS"])
        return subprocess.CompletedProcess(cmd, 0, stdout='{"path": "x"}\n', stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run)
    mine = "--xla_cpu_ftz=true --xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert bench._spawn("--worker", "resnet-jax-ynn", xla_flags=bench.YNN_DEFAULT) == {"path": "x"}
    assert bench._spawn("--worker", "resnet-jax-jaxnet") == {"path": "x"}
    assert seen == [f"--xla_cpu_ftz=true {bench.YNN_DEFAULT}", mine]


def test_bench_refuses_bad_flags_in_one_line(capsys):
    assert main(["bench", "--model", "gpt", "--devices", "2", "--no-startup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxnet: error: --devices 2: the port engine (gpt) runs on one device"]
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--model", "vgg"])
    assert stop.value.code == 2
    assert "argument --model: invalid choice: 'vgg'" in capsys.readouterr().err.strip().splitlines()[-1]
