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

    def spawn(*args: str) -> dict:
        assert args[0] == "--limits"  # torch's kernels only: XLA would compile one program per kernel
        if args[1] == "jax":
            return {"error": "not timed in the test"}
        models = tuple((registry.family(m).config(), bench.batch_of(m)) for m in args[3:])
        return {"square_2048": 1.0, "kernels": limits.time_kernels("torch", models, 1), "device": "cpu"}

    def run_paths(paths, epochs, limit):  # each path in this process (test_run_paths: the workers)
        return [workers.run_worker(p, epochs, limit[p]) for p in paths]

    monkeypatch.setattr(bench, "_spawn", spawn)
    monkeypatch.setattr(bench, "run_paths", run_paths)


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
    # the FLOP count is the family's own declaration: per sample, the step's products over the batch
    step = sum(k.flop for k in limits.step_kernels(config, batch))
    assert report["models"][model]["gflop_per_sample"] == step / batch / 1e9


def test_a_ynn_worker_gets_xlas_default_convolutions_and_the_others_jaxnets(monkeypatch):
    """A ``*-jax-ynn`` worker's XLA_FLAGS: any YNN choice (jaxnet's own included) replaced with
    :data:`bench.YNN_DEFAULT`, every other flag kept; the other workers get the environment
    as it is. No worker claims an accelerator's memory up front (all are alive at once)."""
    mine = "--xla_cpu_ftz=true --xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", mine)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    ynn, other = bench._worker_env("resnet-jax-ynn"), bench._worker_env("resnet-jax-jaxnet")
    assert ynn["XLA_FLAGS"] == f"--xla_cpu_ftz=true {bench.YNN_DEFAULT}"
    assert other["XLA_FLAGS"] == mine
    assert ynn["XLA_PYTHON_CLIENT_PREALLOCATE"] == other["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_run_paths_interleaves_the_workers_epochs_and_keeps_going_past_a_failed_one():
    """Real worker processes (torch paths: no JAX to start): every path built and warmed up
    first, then one timed epoch per path in turn, round after round; a worker that fails to
    start is a row with its error, and the others still run."""
    paths = ("torch-plain", "no-such-path", "torch-jaxnet")
    rows = bench.run_paths(paths, 2, dict.fromkeys(paths, 128), test_limit=100)
    assert [r["path"] for r in rows] == list(paths)
    a, bad, b = rows
    assert (
        bad["error"].startswith("bench worker --serve no-such-path failed:")
        and "invalid choice" in bad["error"]
    )
    assert len(a["epoch_times"]) == len(b["epoch_times"]) == 2 and a["samples"] == b["samples"] == 128
    starts = [a["epoch_starts"][0], b["epoch_starts"][0], a["epoch_starts"][1], b["epoch_starts"][1]]
    assert starts == sorted(starts)  # a, b, a, b: the rounds alternate the paths


def test_a_worker_that_gives_no_reply_in_time_is_stopped_and_named():
    """A hung worker ends as a row with its error, not as a bench that never returns: here a
    real one, given far less time than its start takes."""
    [row] = bench.run_paths(("torch-plain",), 1, {"torch-plain": 128}, reply_timeout=0.05)
    assert row == {
        "path": "torch-plain",
        "error": "bench worker --serve torch-plain gave no reply in 0.05 s: stopped",
    }


def test_start_up_commands_are_timed_in_turn(tmp_path):
    """``_walls`` (the start-up table's timer) runs its commands a, b, a, b, ...: each command's
    median comes from the same stretch of a shared machine's time as the others'."""
    log = tmp_path / "order"
    cmds = {name: ["sh", "-c", f"echo {name} >> {log}"] for name in ("a", "b")}
    times = bench._walls(cmds, repeats=3)
    assert log.read_text().split() == ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


def test_bench_refuses_bad_flags_in_one_line(capsys):
    assert main(["bench", "--model", "gpt", "--devices", "2", "--no-startup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxnet: error: --devices 2: the port engine (gpt) runs on one device"]
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--model", "vgg"])
    assert stop.value.code == 2
    assert "argument --model: invalid choice: 'vgg'" in capsys.readouterr().err.strip().splitlines()[-1]
