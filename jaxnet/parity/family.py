"""``jaxnet parity --model resnet|gpt``: a registered port family through :func:`parity.compare`.

One place builds what a family's comparison needs, for the command line and the calibrator
alike: the pair (``torchref.models.<name>`` from torch's RNG, ``jaxnet.models.<name>`` built
abstractly: ``compare`` gives it the torch module's weights), one batch of real data (the
ResNet: Fashion-MNIST training images drawn from ``(seed, 11)``; the GPT: windows of the
fortunes corpus drawn from ``(seed, 0)``), and the options (the ResNet's NHWC port and the
BatchNorms its ReLUs read; the family's own recipe). Every step trains on that same batch
(``compare``'s default): the rows compare implementations step by step, not learning.

Example:
    >>> report = family.report("resnet", ResNetConfig((4, 8, 8), 1), examples=16, steps=2)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from jaxnet import registry
from jaxnet.config import OptimConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity.report import Report

# What a full-size report takes by default (``jaxnet parity --model resnet|gpt``; see its -h).
EXAMPLES = {"resnet": 32, "gpt": 8}
STEPS = 10


def recipe(name: str, steps: int) -> OptimConfig:
    """The family's recipe over ``steps`` steps: its schedule spans them (cosine to 0 at the
    last), and a warm-up (the GPT's 100 steps) is cut to a tenth of them, at least 1, so that
    the steps see both the warm-up and the decay."""
    opt = next(iter(registry.family(name).recipes.values()))
    if opt.warmup_steps:
        opt = replace(opt, warmup_steps=min(opt.warmup_steps, max(1, steps // 10)))
    return replace(opt, total_steps=steps)


def batch(config, examples: int, seed: int, data_dir: Path | None = None, corpus_dir: Path | None = None):
    """``examples`` real inputs and targets for ``config``'s family, drawn from ``seed``.

    Raises:
        JaxnetError: the data is missing, or the GPT's vocabulary is not the corpus's.
    """
    if registry.family(config).data == registry.TEXT:
        from jaxnet import text

        corpus = text.load(corpus_dir)
        if config.vocab_size != corpus.vocab_size:
            raise JaxnetError(
                f"the model's vocab_size is {config.vocab_size}, the corpus has {corpus.vocab_size} characters"
            )
        return corpus.batches("train", config.block_size, examples, seed=seed, step=0)
    from jaxnet import data

    train = data.load(data_dir).train
    pick = np.random.default_rng([seed, 11]).choice(len(train.labels), examples, replace=False)
    picked = train[pick]  # converts the examples picked, not all 60,000
    return picked.float_images(), picked.labels


def pair(config, seed: int):
    """The torch module (its initial weights from ``torch.manual_seed(seed)``) and the NNX port,
    its variables zeros: ``compare`` gives it the torch module's weights, so none of the port's
    initialisers is compiled and run (one program per shape: most of a tiny run's time)."""
    import torch

    torch.manual_seed(seed)
    return registry.build("torch", config), blank(lambda: registry.build("jax", config), seed)


def blank(build, seed: int = 0):
    """The NNX module ``build()`` makes, its initialisers never run: every array zeros, every
    dropout stream ``key(seed)``. For a port ``compare`` loads torch's weights into: its own
    initial values are never read, and ``nnx.eval_shape`` traces them without compiling a
    program per shape."""
    import jax
    from flax import nnx

    from jaxnet.backends.jax_port import blank_leaf

    graphdef, state = nnx.split(nnx.eval_shape(build))
    return nnx.merge(graphdef, jax.tree.map(lambda leaf: jax.device_put(blank_leaf(leaf, seed=seed)), state))


def options(config, steps: int) -> dict:
    """``compare``'s options for the family: its layout, recipe and the ReLUs' inputs (the
    ResNet's stem BatchNorm and each block's first; the ReLU after a block's residual sum
    reads no module's output on either side, so its ties cannot be looked for)."""
    return {
        "channels_last": config.channels_last,
        "optimizer": recipe(config.kind, steps),
        "relu_inputs": config.relu_inputs,
        "pool_inputs": config.pool_inputs,
    }


def report(
    name: str,
    config=None,
    *,
    examples: int | None = None,
    steps: int = STEPS,
    seed: int = 0,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "auto",
    matmul_precision: str = "highest",
    reverse: bool = False,
    data_dir: Path | None = None,
    corpus_dir: Path | None = None,
) -> Report:
    """The family ``name``'s comparison: ``config`` (default: the registry's full size) on one
    batch of ``examples`` real examples, ``steps`` steps of its recipe, teacher-forced and
    free-running (``reverse``: the batch's examples in reverse order, another reduction order)."""
    from jaxnet import parity

    family = registry.family(name)
    if family.engine != "port":
        raise JaxnetError(f"--model {name} runs on the built-in engine, not compare")
    config = config or family.config()
    x, y = batch(config, examples or EXAMPLES[name], seed, data_dir, corpus_dir)
    if reverse:
        x, y = x[::-1].copy(), y[::-1].copy()
    torch_module, nnx_module = pair(config, seed)
    return parity.compare(
        torch_module, nnx_module, x, y, steps=steps, seed=seed, dtypes=dtypes, device=device,
        matmul_precision=matmul_precision, **options(config, steps),
    )  # fmt: skip
