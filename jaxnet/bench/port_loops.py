"""The port families' bench paths (``--model resnet``, ``--model gpt``): jaxnet's two backends,
and the plain loops a user of each framework writes, on the same recipe, batches and weights.

``<family>-jax-fastconv`` is the port engine's JAX backend with its ``nnx.Conv`` layers on
:mod:`jaxnet.fastconv`'s measured policy (im2col + one GEMM with its own gradient where that
measured faster than XLA's convolution: ``fastconv.gemm_wins``); ``<family>-jax-ynn`` is that
backend unchanged, in a worker the bench starts with XLA's default YNNPACK convolutions.

``epoch_fn(path, train_limit)`` returns a function that runs one epoch (its ``samples``
attribute: the samples an epoch covers). Every path:

- starts from the same weights (``checkpoint.init_state_dict(config, 0)``);
- trains with the family's ``jaxnet train`` recipe and batch size (``registry`` flags), its
  schedule spanning 100 epochs (the learning rate is not what is timed);
- sees the same batches: the ResNet's Fashion-MNIST images by :func:`jaxnet.data.epoch_order`,
  augmented by :func:`jaxnet.augment.augment` from ``(seed, step)`` (numpy, before the
  framework sees them: the plain loops call it too); the GPT's windows at the offsets
  :class:`jaxnet.tasks.TextTask` draws.

The plain loops use nothing of jaxnet's training code: the model (torchref's, or jaxnet's NNX
port with its torch weights loaded), the framework's optimizer and schedule, one step per batch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from jaxnet import checkpoint, registry
from jaxnet.bench import framework_of, model_name
from jaxnet.config import TrainConfig


def setup(path: str, train_limit: int):
    """``(config, recipe, task)`` of ``path``: the family's model, its ``jaxnet train``
    recipe (the schedule over 100 epochs) and its data, ``train_limit`` samples an epoch."""
    from jaxnet import data, tasks, text

    family = registry.family(model_name(path))
    config = family.config()
    base = next(iter(family.recipes.values()), None)
    batch = int(family.flags.get("batch_size", 64))
    if family.data == registry.TEXT:
        limit = {"epoch_steps": max(1, math.ceil((train_limit or batch) / batch))}
        cfg = TrainConfig.from_flat(family.flags | limit, base=base)
        task = tasks.TextTask(text.load(), cfg, config.block_size)
    else:
        cfg = TrainConfig.from_flat(family.flags | {"train_limit": train_limit}, base=base)
        task = tasks.ImageTask(data.load(), cfg)
    cfg = replace(cfg, optimizer=replace(cfg.optimizer, total_steps=100 * task.per_epoch))
    return config, cfg, task


def epoch_fn(path: str, train_limit: int):
    config, cfg, task = setup(path, train_limit)
    state = checkpoint.init_state_dict(config, 0)
    framework, kind = framework_of(path), path.rsplit("-", 1)[1]
    epochs = itertools.count()
    if kind in ("jaxnet", "fastconv", "ynn"):  # ynn: jaxnet's path, XLA's flags set by the bench
        run = _jaxnet(framework, config, cfg, task, state, fast=kind == "fastconv")
    else:
        plain = {("resnet", "torch"): _resnet_torch, ("resnet", "jax"): _resnet_jax,
                 ("gpt", "torch"): _gpt_torch, ("gpt", "jax"): _gpt_jax}  # fmt: skip
        run = plain[config.kind, framework](config, cfg, task, state)

    def epoch() -> None:
        run(task.epoch_batches(next(epochs)))

    epoch.samples = task.n
    return epoch


def _jaxnet(framework: str, config, cfg: TrainConfig, task, state, fast: bool = False):
    """The port engine's backend, as ``jaxnet train`` drives it (``jaxnet.run.train``); with
    ``fast``, its ``nnx.Conv`` layers on :mod:`jaxnet.fastconv` (both modes' graphdefs)."""
    from jaxnet.backends import get_backend

    backend = get_backend(framework, config, seed=cfg.seed, state=state)
    if fast:
        from flax import nnx

        from jaxnet import fastconv

        for mode, graphdef in backend.graphdefs.items():
            model = nnx.merge(graphdef, backend.params, backend.stats, backend.rest)
            model = fastconv.enable(model, where="measured")
            backend.graphdefs[mode] = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    backend.set_optimizer(cfg.optimizer)
    x, y = task.train_arrays()
    if task.gather is None:
        backend.set_train_data(x, y)
    else:
        backend.set_train_data(x, y, gather=task.gather)
    return backend.train_steps


# ---------------------------------------------------------------------------- a user's loops


def _images(task, seed: int):
    """The plain loops' batches of images: augmented on the host from ``(seed, step)``."""
    from jaxnet import augment

    x, y = task.train_arrays()
    steps = itertools.count()
    return lambda idx: (augment.augment(x[idx], seed=seed, step=next(steps)), y[idx])


def _windows(task):
    """The plain loops' batches of text: inputs and next-character targets at the offsets."""
    ids, t = task.corpus.train, task.block_size

    def cut(offsets):
        windows = ids[offsets[:, None] + np.arange(t + 1)]
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    return cut


def _resnet_torch(config, cfg: TrainConfig, task, state):
    import torch
    import torch.nn.functional as F

    from torchref.models import resnet

    model = resnet.ResNet(config.channels, config.blocks, config.num_classes, config.in_channels)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    opt = cfg.optimizer
    optimizer = torch.optim.SGD(resnet.param_groups(model, opt.weight_decay), lr=opt.lr,
                                momentum=opt.momentum, nesterov=opt.nesterov)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.total_steps)
    batch = _images(task, cfg.seed)

    def run(batches):
        model.train()
        for idx in batches:
            x, y = batch(idx)
            optimizer.zero_grad()
            # numpy's 1-channel batch strides its channel axis as 1 element, which torch reads as
            # channels-last too; its CPU conv backward then hangs or corrupts the heap (torch
            # 2.13): restride as a DataLoader's collate would make it
            x = torch.from_numpy(x).clone(memory_format=torch.contiguous_format)
            loss = F.cross_entropy(model(x), torch.from_numpy(y))
            loss.backward()
            optimizer.step()
            scheduler.step()

    return run


def _nnx_step():
    """An NNX user's training step: loss, gradients, optimizer update, one ``nnx.jit``."""
    import optax
    from flax import nnx

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return step


def _resnet_jax(config, cfg: TrainConfig, task, state):
    import jax
    import optax
    from flax import nnx

    from jaxnet.models import resnet

    model = resnet.ResNet(config.channels, config.blocks, config.num_classes, config.in_channels,
                          rngs=nnx.Rngs(0))  # fmt: skip
    resnet.load_torch_state(model, state)
    model.train()
    opt = cfg.optimizer
    tx = optax.chain(
        optax.add_decayed_weights(opt.weight_decay, mask=resnet.decay_mask),  # torch's coupled decay
        optax.sgd(
            optax.cosine_decay_schedule(opt.lr, opt.total_steps), momentum=opt.momentum, nesterov=opt.nesterov
        ),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step, batch = _nnx_step(), _images(task, cfg.seed)

    def run(batches):
        for idx in batches:
            x, y = batch(idx)
            loss = step(model, optimizer, x.transpose(0, 2, 3, 1), y)  # NCHW -> NHWC
        jax.block_until_ready(loss)

    return run


def _gpt_torch(config, cfg: TrainConfig, task, state):
    import torch
    import torch.nn.functional as F

    from torchref.models import gpt

    model = gpt.GPT(gpt.GPTConfig(**registry.fields(config)))
    tied = state | {"lm_head.weight": state["wte.weight"]}
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tied.items()})
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(gpt.param_groups(model, opt.weight_decay), lr=opt.lr, betas=opt.betas)
    warm, total = opt.warmup_steps, opt.total_steps

    def factor(t: int) -> float:  # linear warm-up, then cosine to 0 (nanoGPT's shape)
        return t / warm if t < warm else 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    windows = _windows(task)

    def run(batches):
        model.train()
        for offsets in batches:
            x, y = (torch.from_numpy(a) for a in windows(offsets))
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm)
            optimizer.step()
            scheduler.step()

    return run


def _gpt_jax(config, cfg: TrainConfig, task, state):
    import jax
    import optax
    from flax import nnx

    from jaxnet.models import gpt

    model = gpt.GPT(gpt.GPTConfig(**registry.fields(config)), rngs=nnx.Rngs(0))
    gpt.load_torch_state(model, state)
    model.train()  # dropout on, drawn from the model's own RNG stream
    opt = cfg.optimizer
    schedule = optax.warmup_cosine_decay_schedule(0.0, opt.lr, opt.warmup_steps, opt.total_steps)
    b1, b2 = opt.betas
    tx = optax.chain(
        optax.clip_by_global_norm(opt.clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, weight_decay=opt.weight_decay, mask=gpt.decay_mask),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    step, windows = _nnx_step(), _windows(task)

    def run(batches):
        for offsets in batches:
            x, y = (a.astype(np.int32) for a in windows(offsets))
            loss = step(model, optimizer, x, y)
        jax.block_until_ready(loss)

    return run
