"""The fast training paths compute exactly what the simple ones do (bit for bit on CPU).

Speed itself is measured by ``jaxnet bench``, never asserted in a test.
"""

from __future__ import annotations

import numpy as np
import torch

import torchref
from jaxnet import bench, checkpoint, data
from jaxnet.backends import get_backend
from jaxnet.backends.jax import JaxBackend
from jaxnet.bench import workers
from jaxnet.config import RECIPES, ModelConfig

# 4 full batches (one scan of 4 steps) and a tail of 32 (a scan of 1): both code paths of the scan
LIMIT = 288


def _batches(n: int) -> list[np.ndarray]:
    order = data.epoch_order(n, seed=0, epoch=0)
    return [order[s] for s in data.batch_slices(n, 64)]


def _bits(state: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in state.items()}


def test_jax_scan_epoch_equals_the_step_loop_bit_for_bit(fmnist):
    config = ModelConfig()
    state = checkpoint.init_state_dict(config, 0)
    x, y = fmnist.train[:LIMIT].float_images(), fmnist.train.labels[:LIMIT]
    results = {}
    for scan in (True, False):
        backend = JaxBackend(config, scan=scan)
        backend.load_state_dict(state)
        backend.set_optimizer(RECIPES["adam-l2"])
        backend.set_train_data(x, y)
        losses = backend.train_steps(_batches(LIMIT))
        results[scan] = (_bits(backend.state_dict()), losses.tobytes(), _bits(backend.optimizer_state()))
    assert results[True] == results[False]


def test_torch_fast_path_equals_the_tutorial_dataloader_loop_bit_for_bit(fmnist):
    config = ModelConfig()
    state = checkpoint.init_state_dict(config, 0)
    images, labels = fmnist.train.images[:LIMIT], fmnist.train.labels[:LIMIT]
    model = torchref.NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    torchref.train_loop(torchref.tutorial_loader(images, labels), LIMIT, model, optimizer, log=None)
    fast = get_backend("torch", config, state=state)
    fast.set_optimizer(RECIPES["sgd"])
    fast.set_train_data(data.to_float(images)[:, None], labels)
    fast.train_steps(
        [np.arange(s.start, s.stop) for s in data.batch_slices(LIMIT, 64)]
    )  # the tutorial's order
    tutorial = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert _bits(fast.state_dict()) == _bits(tutorial)


def test_jax_one_call_evaluation_matches_torch_batched_evaluation(fmnist):
    config = ModelConfig()
    state = checkpoint.init_state_dict(config, 4)
    x, y = fmnist.test.float_images(), fmnist.test.labels
    correct_j, loss_j = get_backend("jax", config, state=state).evaluate(x, y)
    correct_t, loss_t = get_backend("torch", config, state=state).evaluate(x, y)
    assert correct_j == correct_t
    # float32: 157 batch means of 64-term sums (K ~ 1800 + 64): well inside 16 sqrt(K) u ~ 4e-5.
    assert abs(loss_j - loss_t) <= 4e-5 * loss_t


def test_every_bench_path_runs_and_the_table_shows_limits_and_plain_loops(capsys):
    """The workers in-process (the command runs each in its own process; that is plumbing)."""
    # 128 training images (two steps an epoch) and 100 test images: every path's code runs whole
    results = [workers.run_worker(p, epochs=1, train_limit=128, test_limit=100) for p in bench.PATHS]
    # The CNN's torch paths run whole; its JAX path is the JAX backend training the CNN, which
    # test_port and test_cli compile and run: here it is built (the CNN, Adadelta) and evaluates.
    cnn_paths = [p for p in bench.CNN_PATHS if "-jax-" not in p]
    results += [workers.run_worker(p, epochs=1, train_limit=128, test_limit=100) for p in cnn_paths]
    assert [r["path"] for r in results] == list(bench.PATHS) + cnn_paths
    _, evaluate = workers._epoch_fn("cnn-jax-jaxnet", train_limit=128, test_limit=100)
    correct, loss = evaluate()
    assert 0 <= correct <= 100 and np.isfinite(loss)
    assert all(r["epoch_s"] > 0 and r["eval_s"] > 0 for r in results)
    peaks = {fw: workers.limits(fw, trials=1, models=("mlp",)) for fw in ("torch", "jax")}
    assert all(
        p["square_2048"] > 0 and min(min(k.values()) for k in p["kernels"].values()) > 0
        for p in peaks.values()
    )
    results.append({"path": "jax-jaxnet-scan", "error": "bench worker --serve jax-jaxnet-scan failed: boom"})
    report = bench.summarise(peaks, results, epochs=1, n=128, startup={"jaxnet eval": 1.0})
    bench.print_table(report)
    out = capsys.readouterr().out
    assert (
        "the mlp's step floor" in out and "FMA peak" in out and "x plain loop" in out and "jaxnet eval" in out
    )
    assert "boom" in out  # a failed worker is a row with its error
    # one floor for every path: per kernel the fastest framework, summed over a step's kernels
    floor = report["floors"]["mlp"]
    for name, kernel in floor["kernels"].items():
        assert kernel["seconds"] == min(peaks[fw]["kernels"][name]["gemm"] for fw in peaks)
    assert floor["step_s"] == sum(floor["kernels"][f"gemm {m}x{k}x{n}"]["seconds"] for m, k, n in [
        (64, 784, 512), (784, 64, 512), (64, 512, 512), (512, 64, 512), (64, 512, 512),
        (64, 512, 10), (512, 64, 10), (64, 10, 512)])  # fmt: skip
    by_path = {r["path"]: r for r in report["results"] if "error" not in r}
    assert (
        by_path["torch-plain"]["pct_floor"] == 100 * floor["step_s"] * 2 / by_path["torch-plain"]["epoch_s"]
    )
    assert by_path["torch-plain"]["vs_plain"] == by_path["jax-plain"]["vs_plain"] == 1.0
    assert by_path["cnn-torch-plain"]["vs_plain"] == 1.0
    cnn = by_path["cnn-torch-jaxnet"]  # its baseline is the CNN's plain loop, not the MLP's
    assert cnn["vs_plain"] == by_path["cnn-torch-plain"]["epoch_s"] / cnn["epoch_s"]
    assert cnn["pct_floor"] is None  # the CNN's kernels were not timed here
    macs = [26 * 26 * 9 * 32, 24 * 24 * 9 * 32 * 64, 12 * 12 * 64 * 128, 128 * 10]
    assert report["cnn_epoch_gflop"] == 2 * 128 * (2 * sum(macs) + sum(macs[1:])) / 1e9
    assert (
        report["epoch_gflop"]
        == 2 * 128 * (2 * (784 * 512 + 512 * 512 + 512 * 10) + (512 * 512 + 512 * 10)) / 1e9
    )


def test_torch_step_on_a_kept_gradient_equals_the_computed_step(fmnist):
    """The parity engine asks torch for the gradient on a batch, then steps on it: the step
    applies the kept gradient, bit for bit what computing it again gives; a change of the
    parameters forgets it (a step from a loaded state is computed, not replayed)."""
    config = ModelConfig(hidden=(32,))
    state = checkpoint.init_state_dict(config, 0)
    x, y = fmnist.train[:LIMIT].float_images(), fmnist.train.labels[:LIMIT]
    batches = _batches(LIMIT)[:3]
    results = {}
    for asked in (True, False):
        backend = get_backend("torch", config, state=state)
        backend.train_dropout = False
        backend.set_optimizer(RECIPES["adam-l2"])
        backend.set_train_data(x, y)
        for idx in batches:
            if asked:
                backend.loss_and_grads(x[idx], y[idx])
                backend.activations(x[idx])
            backend.train_steps([idx])
        results[asked] = _bits(backend.state_dict() | backend.optimizer_state())
    assert results[True] == results[False]
    backend.loss_and_grads(x[batches[0]], y[batches[0]])
    backend.load_state_dict(state)  # the kept gradient belongs to the state before the load
    assert backend._recall("loss_and_grads", (x[batches[0]], y[batches[0]])) is None
