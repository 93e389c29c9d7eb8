"""The processes ``jaxnet bench`` measures in, each holding one framework.

    python -m jaxnet.bench.workers --limits {torch,jax}

prints one JSON object;

    python -m jaxnet.bench.workers --serve PATH --train-limit N [--test-limit N]

times one epoch per ``epoch`` line it reads (:func:`serve`: how ``jaxnet bench`` runs every path).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time

import numpy as np

from jaxnet import process
from jaxnet.bench import (
    ALL_PATHS,
    BATCH,
    MODEL_PATHS,
    TRIALS,
    batch_of,
    framework_of,
    is_cnn,
    model_name,
    model_of,
)
from jaxnet.config import CNN_RECIPE, ModelConfig, OptimConfig


def limits(framework: str, trials: int = TRIALS, models: tuple[str, ...] = ("mlp", "cnn")) -> dict:
    """This framework's kernels, best of ``trials``: float32 GFLOP/s of a 2048^3 GEMM, and the
    seconds of every product a training step of ``models`` performs at its batch size
    (:func:`jaxnet.bench.limits.time_kernels`), on the framework's default device."""
    from jaxnet import registry
    from jaxnet.bench import limits as machine

    configs = tuple((registry.family(m).config(), batch_of(m)) for m in models)
    square = np.random.default_rng(0).random((2048, 2048), np.float32)
    if framework == "torch":
        import torch

        square_t = torch.from_numpy(square)
        run_square, device = (lambda: torch.mm(square_t, square_t)), "cpu"
    else:
        import jax
        import jax.numpy as jnp

        mm, square_j = jax.jit(jnp.dot), jnp.asarray(square)
        run_square = lambda: mm(square_j, square_j).block_until_ready()  # noqa: E731
        first = jax.devices()[0]
        device = first.platform if first.platform == "cpu" else f"{first.platform} ({first.device_kind})"
    return {
        "square_2048": 2 * 2048**3 / machine.best_time(run_square, trials) / 1e9,
        "kernels": machine.time_kernels(framework, configs, trials),
        "device": device,
    }


def _epoch_fn(path: str, train_limit: int, test_limit: int = 0):
    """Build ``path``'s model and data; return (run one epoch, evaluate the test set)."""
    from dataclasses import replace

    from jaxnet import checkpoint, data, registry

    if registry.family(model_name(path)).engine == "port":
        from jaxnet.bench import port_loops

        return port_loops.epoch_fn(path, train_limit), None
    ds = data.load()
    images, labels = ds.train.images, ds.train.labels
    if train_limit:
        images, labels = images[:train_limit], labels[:train_limit]
    n, config = len(labels), model_of(path)
    state = checkpoint.init_state_dict(config, 0)
    batches = [data.epoch_order(n, seed=0, epoch=0)[s] for s in data.batch_slices(n, BATCH)]
    x, test_x, test_y = data.to_float(images)[:, None], ds.test.float_images(), ds.test.labels
    if test_limit:
        test_x, test_y = test_x[:test_limit], test_y[:test_limit]
    if path == "cnn-torch-plain":
        return _cnn_torch_loop(state, x, labels, batches, test_x, test_y)
    opt = OptimConfig()
    if is_cnn(path):  # examples/mnist's recipe, the schedule stepping once per epoch
        opt = replace(CNN_RECIPE, total_steps=100 * len(batches), step_size=len(batches))
        path = path.removeprefix("cnn-")
    if path.startswith("torch-") and path != "torch-jaxnet":
        return _torch_loop(path, state, images, labels, x, batches, test_x, test_y)
    if path == "jax-plain":
        return _jax_loop(state, x, labels, batches, test_x, test_y)
    from jaxnet.backends import get_backend
    from jaxnet.backends.jax import JaxBackend

    if path == "jax-jaxnet-step":
        backend = JaxBackend(config, scan=False, state=state)
    else:
        backend = get_backend(path.split("-")[0], config, state=state)
    if path == "jax-fastconv":  # the same backend, its nnx.Conv layers on jaxnet.fastconv
        from flax import nnx

        from jaxnet import fastconv

        model = fastconv.enable(nnx.merge(backend.graphdef, backend.params), where="measured")
        backend.graphdef, backend.params = nnx.split(model, nnx.Param)
    backend.set_optimizer(opt)
    backend.set_train_data(x, labels)
    return (lambda: backend.train_steps(batches)), (lambda: backend.evaluate(test_x, test_y))


def _torch_loop(path, state, images, labels, x, batches, test_x, test_y):
    import torch

    import torchref

    model = torchref.NeuralNetwork()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(test_x), torch.from_numpy(test_y)
    evaluate = lambda: torchref.evaluate(model, tx, ty)  # noqa: E731
    if path == "torch-tutorial":
        loader = torchref.tutorial_loader(images, labels)
        return (lambda: torchref.train_loop(loader, len(labels), model, optimizer, log=None)), evaluate
    loss_fn, X, Y = torch.nn.CrossEntropyLoss(), torch.tensor(x), torch.tensor(labels)
    index = [torch.from_numpy(b) for b in batches]

    def epoch():  # what a torch user writes over pre-made tensors
        for i in index:
            loss = loss_fn(model(X[i]), Y[i])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    return epoch, evaluate


def _cnn_torch_loop(state, x, labels, batches, test_x, test_y):
    import torch
    import torch.nn.functional as F

    from torchref import cnn

    model = cnn.Net()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    X, Y, index = torch.tensor(x), torch.tensor(labels), [torch.from_numpy(b) for b in batches]
    tx, ty = torch.from_numpy(test_x), torch.from_numpy(test_y)

    def epoch():  # examples/mnist's train(), over pre-made tensors
        model.train()
        for i in index:
            optimizer.zero_grad()
            loss = F.nll_loss(model(X[i]), Y[i])
            loss.backward()
            optimizer.step()
        scheduler.step()

    def evaluate():  # examples/mnist's test()
        model.eval()
        with torch.no_grad():
            out = torch.cat([model(c) for c in tx.split(1000)])
            return int((out.argmax(1) == ty).sum()), float(F.nll_loss(out, ty))

    return epoch, evaluate


def _jax_loop(state, x, labels, batches, test_x, test_y):
    import jax
    import optax
    from flax import nnx

    from jaxnet import model as jmodel
    from jaxnet import train as jtrain

    graphdef, params = nnx.split(jmodel.build(ModelConfig()), nnx.Param)
    params = jmodel.from_torch_layout(params, state)
    tx = optax.sgd(1e-3)
    opt_state = [tx.init(params)]
    holder = [params]

    @jax.jit
    def step(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(jtrain.loss_fn)(params, graphdef, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def epoch():  # host batches, one jitted step each
        for b in batches:
            holder[0], opt_state[0], _ = step(holder[0], opt_state[0], x[b], labels[b])
        jax.block_until_ready(holder[0])

    evaluate = jax.jit(jtrain.evaluate, static_argnums=0)
    return epoch, (lambda: jax.block_until_ready(evaluate(graphdef, holder[0], test_x, test_y)))


def _timed(fn) -> tuple[float, float]:
    """(wall-clock start, seconds) of one call."""
    when, start = time.time(), time.perf_counter()
    fn()
    return when, time.perf_counter() - start


def run_worker(path: str, epochs: int, train_limit: int, test_limit: int = 0) -> dict:
    """Time ``path`` in this process: one warm-up epoch, then ``epochs`` more; the evaluation
    (the MLP's and the CNN's, on the test set) four times."""
    session = Session(path, train_limit, test_limit)
    for _ in range(epochs):
        session.epoch()
    return session.result()


class Session:
    """One path built and warmed up (its first epoch, compiling), then timed an epoch at a time.

    A port family's epoch function says its own samples per epoch."""

    def __init__(self, path: str, train_limit: int, test_limit: int = 0) -> None:
        t0 = time.perf_counter()
        self.path, self.train_limit = path, train_limit
        self.run_epoch, self.evaluate = _epoch_fn(path, train_limit, test_limit)
        self.setup_s = time.perf_counter() - t0
        self.warmup_s = _timed(self.run_epoch)[1]
        self.starts: list[float] = []  # each timed epoch's wall-clock start (time.time())
        self.times: list[float] = []

    def epoch(self) -> float:
        when, seconds = _timed(self.run_epoch)
        self.starts.append(when)
        self.times.append(seconds)
        return seconds

    def result(self) -> dict:
        """The row: the median timed epoch, the warm-up's extra time as compile, the evaluation's
        median of three after a first one, peak memory."""
        eval_times = [float("nan")] * 4  # not timed where there is no evaluation (the port families)
        for i in range(4 if self.evaluate else 0):
            eval_times[i] = _timed(self.evaluate)[1]
        median = statistics.median(self.times)
        return {
            "path": self.path,
            "samples": getattr(self.run_epoch, "samples", None) or self.train_limit or 60000,
            "setup_s": self.setup_s,
            "epoch_s": median,
            "epoch_times": self.times,
            "epoch_starts": self.starts,
            "compile_s": max(0.0, self.warmup_s - median),
            "eval_s": statistics.median(eval_times[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device": _device_of(self.path),
            "allocator": process.allocator(),
        }


def serve(path: str, train_limit: int, test_limit: int = 0, commands=sys.stdin, out=sys.stdout) -> None:
    """The worker ``jaxnet bench`` drives (:func:`jaxnet.bench.run_paths`): build ``path`` and
    run its warm-up epoch, say ``{"ready": path}``; then one timed epoch per ``epoch`` line
    read, each answered with ``{"epoch_s": seconds}``; at ``finish`` (or the end of the input)
    the evaluations and the result. One JSON object per line."""

    def say(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    session = Session(path, train_limit, test_limit)
    say({"ready": path})
    for line in commands:
        if line.strip() != "epoch":
            break
        say({"epoch_s": session.epoch()})
    say(session.result())


def _device_of(path: str) -> str:
    """Where ``path`` computed: the plain torch loops on the CPU, the rest on the framework's
    default device (a GPU where there is one)."""
    if framework_of(path) == "jax":
        import jax

        return jax.devices()[0].platform
    if path.removeprefix(f"{model_name(path)}-") == "torch-jaxnet":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


if __name__ == "__main__":
    import argparse

    worker = argparse.ArgumentParser()
    worker.add_argument("--serve", choices=ALL_PATHS)
    worker.add_argument("--limits", choices=("torch", "jax"))
    worker.add_argument("--models", nargs="+", choices=tuple(MODEL_PATHS), default=("mlp", "cnn"))
    worker.add_argument("--train-limit", type=int, default=0)
    worker.add_argument("--test-limit", type=int, default=0)
    w = worker.parse_args()
    process.prepare()
    if w.serve:  # the replies on a descriptor of their own; whatever else is printed goes to stderr
        replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        serve(w.serve, w.train_limit, w.test_limit, out=replies)
        sys.exit()
    print(json.dumps(limits(w.limits, models=tuple(w.models))))
