"""Time the ResNet's training steps in one framework: 1,000 augmented Fashion-MNIST images,
batch 100 (10 steps), SGD lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on every parameter
(the timing is the point, not the recipe). Run each framework in its own process.

    PYTHONPATH=$PWD python docs/scripts/resnet_step_time.py {torch|jax} C0,C1,C2 BLOCKS [THREADS]

Prints the first step (JAX: tracing and compilation) and the median of steps 2..10: wall time
and this process's CPU time. THREADS sets torch's intra-op threads; for one-threaded XLA set
``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from jaxnet import process

process.prepare()  # as jaxnet's entry points do: MKL's reproducible mode, set before torch loads

from jaxnet import augment, data  # noqa: E402

BATCH, STEPS = 100, 10


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    split = data.load().train
    out = []
    for step in range(STEPS):
        sl = slice(step * BATCH, (step + 1) * BATCH)
        x = data.to_float(augment.augment(split.images[sl], seed=0, step=step))[:, None]  # [B, 1, 28, 28]
        out.append((x, split.labels[sl]))
    return out


def torch_steps(
    channels: tuple[int, ...], blocks: int, threads: int | None
) -> tuple[list[float], list[float]]:
    import torch

    from torchref.models.resnet import ResNet

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet(channels, blocks).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    wall, cpu = [], []
    for x, y in batches():
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def jax_steps(channels: tuple[int, ...], blocks: int) -> tuple[list[float], list[float]]:
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from jaxnet.models.resnet import ResNet

    model = ResNet(channels, blocks, rngs=nnx.Rngs(0))
    model.train()
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9, nesterov=True))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    wall, cpu = [], []
    for x, y in batches():
        t, c = time.perf_counter(), time.process_time()
        step(model, opt, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(y)).block_until_ready()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main(argv: list[str]) -> None:
    framework, channels, blocks = argv[0], tuple(int(c) for c in argv[1].split(",")), int(argv[2])
    threads = int(argv[3]) if len(argv) > 3 else None
    if framework == "torch":
        wall, cpu = torch_steps(channels, blocks, threads)
    else:
        wall, cpu = jax_steps(channels, blocks)
    print(
        f"{framework} channels={channels} blocks={blocks}: first step {wall[0]:.2f} s; steps 2..{STEPS}: "
        f"median wall {np.median(wall[1:]) * 1e3:.0f} ms, median CPU {np.median(cpu[1:]) * 1e3:.0f} ms per {BATCH} images"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
