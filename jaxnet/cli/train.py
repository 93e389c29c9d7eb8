"""Train the tutorial model (defaults: the tutorial's recipe, SGD lr 1e-3, batch 64, 10 epochs,
with the batches shuffled every epoch; --no-shuffle is the tutorial's fixed order), or another
family of --model with its own recipe, with either backend:

  mlp     the tutorial's MLP
  cnn     PyTorch examples/mnist's CNN: adadelta lr 1.0, step schedule gamma 0.7 every epoch,
          14 epochs
  resnet  torchvision's BasicBlock ResNet (16/32/64 channels, 2 blocks a stage): SGD lr 0.1
          Nesterov momentum 0.9, weight decay 5e-4 on conv and Linear weights only, cosine
          schedule, batch 128, 20 epochs; every batch randomly cropped (padding 4) and flipped,
          drawn from (seed, step) alike in both backends; BatchNorm in train mode for the
          steps, eval mode for evaluation; checkpoints hold the running statistics
  gpt     a nanoGPT-style character model on the fortunes corpus (block 128, 4 layers, 4
          heads, 128 wide, dropout 0.1): AdamW lr 1e-3 betas (0.9, 0.95) weight decay 0.1 off
          LayerNorm, biases and embeddings, 100 warm-up steps then cosine, gradients clipped
          at 1.0, batch 64, 10 epochs of 500 steps. The text is a stream, so an epoch is
          --epoch-steps steps, each on windows at offsets drawn from (seed, step); after each
          one the validation loss in nats per character

Prints the tutorial's lines (a loss every 100 batches, the Test Error block after each
epoch; the GPT's validation loss). With --save, a checkpoint is written after every epoch and on Ctrl-C; --resume
continues one, in either backend, on the same trajectory, or refuses in one line a checkpoint
whose parts (weights, optimizer state, state.json) do not belong together. A NaN or inf loss
stops the run and keeps the last good checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from jaxnet import registry
from jaxnet.argtypes import finite_float, nonneg_int, positive_int
from jaxnet.cli._common import add_backend, add_corpus_dir, add_data_dir
from jaxnet.config import DTYPES, FLAGS, OPTIMIZERS, SCHEDULES, AnyModel, ModelConfig, TrainConfig
from jaxnet.errors import JaxnetError

DEFAULT_HIDDEN = ModelConfig().hidden


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_backend(p)
    add_data_dir(p)
    add_corpus_dir(p)
    # Recipe flags default to None so that a resumed run can tell "given" from "not given";
    # the defaults shown are FLAGS', applied in TrainConfig.from_flat.
    recipe = p.add_argument_group(
        "recipe (defaults: the tutorial's, or --model's own, above; a resumed run takes the checkpoint's)"
    )
    recipe.add_argument("--optimizer", choices=OPTIMIZERS, help=f"(default: {FLAGS['optimizer']})")
    recipe.add_argument("--lr", type=finite_float, help=f"learning rate (default: {FLAGS['lr']})")
    recipe.add_argument("--momentum", type=finite_float, help=f"sgd only (default: {FLAGS['momentum']})")
    recipe.add_argument(
        "--nesterov", action="store_const", const=True, help="Nesterov momentum (sgd with --momentum)"
    )
    recipe.add_argument("--weight-decay", type=finite_float,
                        help="L2 for sgd and adam, decoupled for adamw (default: torch's: 0, or 1e-2 for adamw)")  # fmt: skip
    recipe.add_argument("--schedule", choices=SCHEDULES,
                        help=f"per-step learning-rate schedule over the run (default: {FLAGS['schedule']})")  # fmt: skip
    recipe.add_argument("--gamma", type=finite_float,
                        help=f"the step schedule's factor (default: {FLAGS['gamma']})")  # fmt: skip
    recipe.add_argument("--step-size", type=nonneg_int,
                        help="steps between the step schedule's decays (default: a third of the run; "
                        "one epoch with --model cnn)")  # fmt: skip
    recipe.add_argument("--clip-norm", type=finite_float,
                        help="clip the gradients' global 2-norm to this, as torch's clip_grad_norm_ before "
                        "every step (default: 0, no clipping)")  # fmt: skip
    recipe.add_argument("--warmup-steps", type=nonneg_int,
                        help="steps of linear warm-up from 0 before the cosine decay; needs --schedule "
                        "warmup-cosine (default: 0)")  # fmt: skip
    recipe.add_argument("--no-decay", nargs="+", metavar="PATTERN",
                        help="no weight decay for the parameters whose torch names match any of these "
                        "patterns ('*.bias'; fnmatch, case-sensitive) (default: decay on every parameter)")  # fmt: skip
    recipe.add_argument("--batch-size", type=positive_int, help=f"(default: {FLAGS['batch_size']})")
    recipe.add_argument("--epochs", type=positive_int,
                        help=f"total epochs, counting a resumed run's (default: {FLAGS['epochs']})")  # fmt: skip
    recipe.add_argument("--seed", type=nonneg_int,
                        help=f"initial weights and batch order (default: {FLAGS['seed']})")  # fmt: skip
    recipe.add_argument("--shuffle", action=argparse.BooleanOptionalAction,
                        help="a new batch order every epoch; --no-shuffle is the tutorial's fixed order (default: shuffle)")  # fmt: skip
    recipe.add_argument("--dtype", choices=DTYPES, help=f"(default: {FLAGS['dtype']})")
    recipe.add_argument("--train-limit", type=nonneg_int,
                        help="train on the first N images only, for quick runs (default: 0, all 60,000)")  # fmt: skip
    recipe.add_argument("--test-limit", type=nonneg_int, default=0,
                        help="evaluate on the first N test images (gpt: validation windows) only, for quick runs "
                        "(default: 0, all)")  # fmt: skip
    recipe.add_argument("--epoch-steps", type=positive_int,
                        help="steps an epoch has on a text stream (--model gpt; default: 500): the "
                        "validation loss is measured and a checkpoint saved after each such epoch")  # fmt: skip
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=registry.NAMES,
                       help="the family to train, above (default: mlp, or the checkpoint's)")  # fmt: skip
    model.add_argument("--hidden", type=positive_int, nargs="+",
                       help=f"the MLP's hidden layer sizes (default: {' '.join(map(str, DEFAULT_HIDDEN))})")  # fmt: skip
    model.add_argument("--size", nargs="+", metavar="FIELD=VALUE",
                       help="the model's sizes, fields of its config: resnet channels=16,32,64 blocks=2; "
                       "gpt block_size=128 n_layer=4 n_head=4 n_embd=128 dropout=0.1; cnn channels=32,64 "
                       "hidden=128 (default: the family's)")  # fmt: skip
    model.add_argument("--init", choices=("shared", "native"), default="shared",
                       help="shared: numpy weights from --seed, the same in both backends; "
                       "native: each framework's own RNG (default: %(default)s)")  # fmt: skip
    par = p.add_argument_group("data-parallel (the same run on several devices; see the README)")
    par.add_argument("--devices", type=positive_int, default=1,
                     help="split every batch over N devices: JAX shards it over a device mesh (on a CPU, "
                     "N virtual devices); torch runs N DistributedDataParallel processes, launched here "
                     "or by torchrun (default: %(default)s)")  # fmt: skip
    par.add_argument("--processes", type=positive_int, default=1,
                     help="JAX only: spread the devices over N local processes joined by "
                     "jax.distributed (CPU collectives over gloo) (default: %(default)s)")  # fmt: skip
    out = p.add_argument_group("files")
    out.add_argument("--save", type=Path,
                     help="checkpoint directory, written after every epoch and on Ctrl-C: model.safetensors "
                     "(the weights, torch's layout), optimizer.safetensors, state.json")  # fmt: skip
    out.add_argument("--resume", type=Path, help="continue from a checkpoint (from either backend)")
    out.add_argument("--metrics", type=Path, help="append one JSON line per epoch")
    out.add_argument("--plot", type=Path, help="PNG of loss and accuracy per epoch")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction,
                     help="progress bar (default: when stdout is a terminal)")  # fmt: skip


def recipe(args: argparse.Namespace, resumed: TrainConfig | None, model: str = "mlp") -> TrainConfig:
    """The training config from the flags and the family's defaults (:mod:`jaxnet.registry`);
    when resuming, the checkpoint's, which flags must match.

    Raises:
        JaxnetError: an invalid value, or a flag that contradicts the checkpoint.
    """
    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    if "no_decay" in given:  # as the checkpoint's recipe holds it, for the comparison below
        given["no_decay"] = tuple(given["no_decay"])
    family = registry.family(model)
    if family.data == registry.TEXT and given.get("train_limit"):
        raise JaxnetError(
            f"--train-limit counts images; --model {model} trains on a text stream (--epoch-steps)"
        )
    if family.data != registry.TEXT and "epoch_steps" in given:
        raise JaxnetError(f"--epoch-steps is for a text stream; an epoch of --model {model} is one pass")
    if resumed is None:
        values = family.flags | given
        if values.get("step_size") == registry.EPOCH:  # examples/mnist's StepLR(step_size=1): once per epoch
            from jaxnet.run import steps_per_epoch

            n = min(values.get("train_limit") or 60000, 60000)
            values["step_size"] = steps_per_epoch(n, values.get("batch_size", FLAGS["batch_size"]))
        return TrainConfig.from_flat(values, base=next(iter(family.recipes.values()), None))
    current = resumed.flat()
    for key, value in given.items():
        if key != "epochs" and value != current[key]:
            raise JaxnetError(
                f"--{key.replace('_', '-')} {value} differs from the checkpoint's {current[key]}"
            )
    opt = resumed.optimizer
    spans_run = opt.schedule in ("cosine", "warmup-cosine") or (opt.schedule == "step" and not opt.step_size)
    if given.get("epochs", resumed.epochs) != resumed.epochs and spans_run:
        raise JaxnetError(
            f"--epochs cannot change with the {opt.schedule} schedule: it decays over the whole run"
        )
    return TrainConfig.from_flat(current | given, base=opt)


def check_no_decay(cfg: TrainConfig, config: AnyModel) -> None:
    """On the command line the model is known: a ``--no-decay`` pattern that matches none of
    its parameters is a typo (a recipe's patterns may match nothing: they serve many models).

    Raises:
        JaxnetError: naming the pattern and some of the model's parameter names.
    """
    names = list(config.param_shapes())
    for pattern in cfg.optimizer.unmatched(names):
        raise JaxnetError(
            f"--no-decay {pattern!r} matches no parameter of the {config.kind} ({', '.join(names[:4])}, ...)"
        )


def parse_sizes(pairs: list[str] | None, config_class: type) -> dict[str, object]:
    """``["channels=16,32,64", "blocks=2"]`` -> ``{"channels": (16, 32, 64), "blocks": 2}``,
    checked against the config's fields.

    Raises:
        JaxnetError: a pair without ``=``, an unknown field, or a value that is not a number.
    """
    names = {f.name: f for f in dataclasses.fields(config_class)}
    out: dict[str, object] = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep or name not in names:
            raise JaxnetError(f"--size {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(names)}")
        default = names[name].default
        try:
            if isinstance(default, tuple):
                out[name] = tuple(int(v) for v in text.split(","))
            else:
                out[name] = type(default)(text)
        except ValueError:
            raise JaxnetError(f"--size {pair!r}: {text!r} is not a {type(default).__name__}") from None
    return out


def model_config(
    args: argparse.Namespace, parser: argparse.ArgumentParser, resumed: AnyModel | None
) -> AnyModel:
    """The model of ``--model``, ``--size`` and ``--hidden``, or the checkpoint's (which they must match)."""
    kind = args.model or (resumed.kind if resumed else "mlp")
    family = registry.family(kind)
    hidden = tuple(args.hidden) if args.hidden else None
    if hidden is not None and "hidden" not in family.shorthand:
        parser.error(f"--hidden sizes the MLP; the {kind} takes --size")
    try:
        sizes = parse_sizes(getattr(args, "size", None), family.config)
        if hidden is not None:
            sizes["hidden"] = hidden
        config = family.config(**sizes)
    except JaxnetError as err:
        parser.error(str(err))
    if resumed is not None:
        if kind != resumed.kind:
            parser.error(f"--model {kind} differs from the checkpoint's {resumed.kind}")
        for name, value in sizes.items():
            if value != getattr(resumed, name):
                flag = "--hidden " + " ".join(map(str, value)) if name == "hidden" else f"--size {name}"
                parser.error(f"{flag} differs from the checkpoint's {getattr(resumed, name)}")
        return resumed
    return config


def launch_or_join(args: argparse.Namespace, parser: argparse.ArgumentParser, cfg: TrainConfig) -> int | None:
    """Start the worker processes a data-parallel run needs (and return the run's status), or
    set this process up as one of them (and return None)."""
    from jaxnet import distributed, run

    if args.devices > 1 and registry.family(args.model or "mlp").engine == "port":
        raise JaxnetError(f"--devices: --model {args.model} trains on one device (the port engine)")
    run.check_shards(cfg.train_limit or 60000, cfg.batch_size, args.devices)  # before any process starts
    if args.backend == "torch" and args.devices > (os.cpu_count() or 1) and args.device == "cpu":
        raise JaxnetError(
            f"--devices {args.devices}: more torch processes than this machine's {os.cpu_count()} cores"
        )

    if args.processes > 1 and args.backend != "jax":
        parser.error("--processes is for --backend jax; torch runs one process per device (--devices)")
    worker = distributed.WORKER in os.environ or "RANK" in os.environ or "JAXNET_COORDINATOR" in os.environ
    if not worker and args.backend == "torch" and args.devices > 1:
        return distributed.launch(args.argv, distributed.torch_envs(args.devices))
    if not worker and args.backend == "jax" and args.processes > 1:
        return distributed.launch(args.argv, distributed.jax_envs(args.processes, args.devices))
    if args.backend == "jax" and args.devices > 1 and "JAXNET_COORDINATOR" not in os.environ:
        # N virtual CPU devices, set before JAX starts (on a GPU machine the GPUs are used)
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    return None


def load_task(args: argparse.Namespace, config, cfg: TrainConfig):
    """What the family trains on (:mod:`jaxnet.tasks`): Fashion-MNIST, or the fortunes corpus.

    Raises:
        JaxnetError: the data is missing or damaged, or the model's vocabulary is not the corpus's.
    """
    from jaxnet import data, tasks, text

    if registry.family(config).data != registry.TEXT:
        return tasks.ImageTask(data.load(args.data_dir), cfg, getattr(args, "test_limit", 0))
    corpus = text.load(args.corpus_dir)
    if config.vocab_size != corpus.vocab_size:
        raise JaxnetError(
            f"the model's vocab_size is {config.vocab_size}, the corpus has {corpus.vocab_size} characters"
        )
    return tasks.TextTask(corpus, cfg, config.block_size, getattr(args, "test_limit", 0))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import checkpoint

    resumed = checkpoint.load(args.resume) if args.resume else None
    if resumed is not None and resumed.train_config is None:
        raise JaxnetError(f"{args.resume}: weights only (no {checkpoint.STATE}), no training state to resume")
    config = model_config(args, parser, resumed.config if resumed else None)
    try:
        cfg = recipe(args, resumed.train_config if resumed else None, config.kind)
        check_no_decay(cfg, config)
    except JaxnetError as err:
        parser.error(str(err))
    if args.save is not None:
        checkpoint.check_save_path(args.save)  # before an epoch of work, not after

    launched = launch_or_join(args, parser, cfg)
    if launched is not None:
        return launched
    from jaxnet import distributed, run  # the heavy imports after the flags are checked
    from jaxnet.backends import get_backend

    if args.backend == "jax":
        distributed.join_jax()  # in a multi-process JAX run: before any JAX computation

    if resumed is not None:
        run.check_resume(resumed, config, cfg)
    ds = load_task(args, config, cfg)
    state = checkpoint.init_state_dict(config, cfg.seed, cfg.dtype) if args.init == "shared" else None
    if resumed is not None:
        state = resumed.model
    backend = get_backend(
        args.backend,
        config,
        dtype=cfg.dtype,
        device=args.device,
        seed=cfg.seed,
        state=state,
        devices=args.devices,
    )
    if backend.rank.writer:
        print(f"backend: {backend.describe()}", file=sys.stderr)
    try:
        history = run.train(
            backend, ds, cfg, save=args.save, resume=resumed, metrics=args.metrics, progress=args.progress
        )
    except run.Interrupted as stop:
        where = (
            f"; saved to {stop.checkpoint}, continue with --resume {stop.checkpoint}"
            if stop.checkpoint
            else ""
        )
        if backend.rank.writer:
            print(f"jaxnet: interrupted at step {stop.step}{where}", file=sys.stderr)
        return 130
    if args.plot and backend.rank.writer:
        from jaxnet import plot

        rows = plot.read_metrics(args.metrics) if args.metrics else [vars(h) for h in history]
        plot.plot_runs({args.backend: rows}, args.plot)
    return 0
