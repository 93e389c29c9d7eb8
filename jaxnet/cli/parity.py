"""Compare jax with torch layer by layer and step by step, against measured noise floors.

Every row passes when its error is at most K times the noise floor measured in the same run
(torch's float32 result against its float64 result, scaled to the row's dtype; per element
for optimizer steps). Steps are compared teacher-forced (both sides step from torch's state)
and free-running (each its own trajectory; where the gap leaves its accumulated bound, a
cause must be found: a ReLU tie, a 2x2 max-pool tie (the CNN), or a near-zero gradient that a
normalised update (Adam, Adadelta) turns into a full-size step of either sign; then the run is
judged on outcomes). Exit status 0 only if every row passes. --plant FAULT puts a realistic
porting bug in the JAX side and runs the recipes it lives in, so that a row must catch it.

--model resnet and --model gpt run the port engine (jaxnet.parity.compare) on
torchref/models/<name>.py against jaxnet/models/<name>.py at the registry's sizes (--size
FIELD=VALUE to change them): one batch of real data (--examples; Fashion-MNIST images, or
windows of the fortunes corpus), the family's recipe over --steps steps (default 10) on that
batch, teacher-forced and free-running, then outcomes. The defaults (32 images, 8 windows of
128 characters, 10 steps) keep a full-size report to a few minutes on 2 CPU cores (measured:
162 s and 134 s of CPU time, docs/parity-resnet-cpu.md, docs/parity-gpt-cpu.md): each step
runs about a dozen forward and backward passes (torch float32 and float64, the JAX sides,
the reversed-order spread of BatchNorm's statistics, the free-running pairs), and fewer
examples would leave BatchNorm's statistics over too few images to be those of training.
With BatchNorm every example depends on its whole batch, so a divergence attributed to one
example's ReLU tie is attributed to that batch.

jaxnet parity record / jaxnet parity check: record your own torch module's reference once, and
check its NNX port against it later without torch (jaxnet parity check -h).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxnet import registry
from jaxnet.argtypes import nonneg_int, positive_int
from jaxnet.cli import parity_recorded
from jaxnet.cli._common import add_corpus_dir, add_data_dir
from jaxnet.config import ALL_RECIPES, DEVICES, PARITY_WORKER_MIN_STEPS
from jaxnet.errors import JaxnetError

MODELS = registry.NAMES
BUILTIN_STEPS = 100  # the MLP's and the CNN's --steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp: the tutorial's; cnn: PyTorch examples/mnist's CNN (its recipe: adadelta-step); "
                   "resnet, gpt: the ported families through parity.compare, each with its own recipe "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--size", nargs="+", metavar="FIELD=VALUE",
                   help="the model's sizes, fields of its config, as jaxnet train takes them: resnet "
                   "channels=4,8,8 blocks=1; gpt block_size=16 n_layer=1 n_head=2 n_embd=16 dropout=0 "
                   "(default: the family's full size)")  # fmt: skip
    p.add_argument("--examples", type=positive_int,
                   help="resnet, gpt: the batch every step trains on: Fashion-MNIST images, or "
                   "windows of the fortunes corpus (default: 32 for resnet, 8 for gpt)")  # fmt: skip
    p.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                   help="the dtypes whose rows to report (default: %(default)s)")  # fmt: skip
    p.add_argument("--steps", type=positive_int,
                   help="optimizer steps per recipe, teacher-forced and free-running (default: "
                   f"{BUILTIN_STEPS} for mlp and cnn, 10 for resnet and gpt)")  # fmt: skip
    p.add_argument("--optimizer", choices=(*ALL_RECIPES, "all", "none"), default="all",
                   help="recipe of the step rows, or none: forward, gradient and probe rows only "
                   "(default: %(default)s of the model's: the MLP's four, the CNN's adadelta-step)")  # fmt: skip
    p.add_argument("--epoch-optimizer", choices=(*ALL_RECIPES, "none"),
                   help="recipe of the free-running epoch, or none (default: sgd for the MLP, none for the CNN)")  # fmt: skip
    p.add_argument("--train-limit", type=nonneg_int, default=0,
                   help="the epoch runs over the first N training images (default: 0, all)")  # fmt: skip
    p.add_argument("--device", choices=DEVICES, default="auto", help="(default: %(default)s)")
    p.add_argument("--matmul-precision", choices=("highest", "default"), default="highest",
                   help="highest: full float32 matmuls in both (restored after); default: each "
                   "framework's own (TF32 on recent GPUs in JAX), with floors scaled to it (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--seed", type=nonneg_int, default=0, help="initial weights and batch order (default: %(default)s)"
    )
    p.add_argument("--plant", metavar="FAULT",
                   help="run with a realistic porting bug planted in the JAX side, to see which row "
                   "catches it; the default --optimizer all runs the fault's own recipes, and a model or "
                   "recipe that never runs it is refused (names: jaxnet/parity/faults.py, e.g. adam-eps-1e-7)")  # fmt: skip
    p.add_argument("--devices", type=positive_int, default=1,
                   help="also run the same training data-parallel on N devices in each framework (JAX's "
                   "device mesh, torch's DistributedDataParallel) and compare with one device (default: %(default)s)")  # fmt: skip
    p.add_argument("--workers", type=positive_int,
                   help="mlp, cnn: processes that run the step and epoch sections, each on its share of "
                   "the cores; the rows are one process's at the same thread settings (the default's fewer "
                   "threads each are another arithmetic order) (default: one per core "
                   "on a CPU, up to one per section; one on a GPU, with --plant, or for a report under "
                   f"{PARITY_WORKER_MIN_STEPS} steps, too short to pay for starting them)")  # fmt: skip
    add_data_dir(p)
    add_corpus_dir(p)
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("--markdown", type=Path, help="also write the report as a markdown table")
    p.add_argument("--plot", type=Path, help="also write a PNG: free-running gap and bound against step")
    parity_recorded.add_subcommands(p)  # record / check: their own flags and run


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import contextlib

    from jaxnet import data, parity
    from jaxnet.parity import faults

    if args.plant is not None and args.plant not in faults.FAULTS:
        parser.error(f"--plant: unknown fault {args.plant!r} (one of {', '.join(faults.FAULTS)})")
    if args.model != "mlp" and args.devices > 1:
        parser.error("--devices is for --model mlp (the data-parallel rows are the MLP's)")
    port = registry.family(args.model).engine == "port"
    _check_engine_flags(args, parser, port)
    config = _config(args, parser)
    if args.plant is not None:
        args.optimizer = plant_recipes(args.plant, args.model, args.optimizer, faults.FAULTS)
        fault = faults.FAULTS[args.plant]
        where = f"step recipes: {args.optimizer}" if fault.recipes else "the forward and probe rows run it"
        print(f"planted {args.plant} ({fault.description}) in the JAX side; {where}", file=sys.stderr)
    with faults.planted(args.plant) if args.plant else contextlib.nullcontext():
        report = _port_report(args, config) if port else _report(args, data, parity, config)
    if args.devices > 1:
        from jaxnet.parity import data_parallel

        dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
        report.rows += data_parallel.section(
            args.devices, dtypes, steps=min(args.steps or BUILTIN_STEPS, 20), seed=args.seed
        )
    parity.print_table(report)
    if args.json:
        parity.write_json(report, args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(parity.markdown(report))
    if args.plot:
        parity.plot(report, args.plot)
    return 0 if report.passed else 1


def _check_engine_flags(args, parser, port: bool) -> None:
    """Refuse the flags of the other engine (one line)."""
    if port:
        own = registry.family(args.model).recipes
        if args.optimizer not in ("all", "none", *own):
            parser.error(
                f"--optimizer {args.optimizer}: --model {args.model} runs its own recipe ({', '.join(own)})"
            )
        for flag, value in (("--epoch-optimizer", args.epoch_optimizer), ("--train-limit", args.train_limit)):
            if value:
                parser.error(f"{flag} is for the MLP and the CNN (--model {args.model} trains on one batch)")
    elif args.examples is not None:
        parser.error("--examples is for --model resnet and gpt (the MLP and the CNN take --train-limit)")
    if args.workers is not None and (port or args.plant is not None) and args.workers > 1:
        why = (
            f"--model {args.model} compares in one process"
            if port
            else "a planted fault lives in this process"
        )
        parser.error(f"--workers {args.workers}: {why}")


def _config(args, parser):
    """The family's config at ``--size`` (None: the family's default, for the built-in engine)."""
    from jaxnet.cli.train import parse_sizes

    family = registry.family(args.model)
    try:
        sizes = parse_sizes(args.size, family.config)
        return family.config(**sizes) if sizes or family.engine == "port" else None
    except JaxnetError as err:
        parser.error(str(err))


def _port_report(args, config):
    from jaxnet.parity import family

    return family.report(
        args.model,
        config,
        examples=args.examples,
        steps=0 if args.optimizer == "none" else (args.steps or family.STEPS),
        seed=args.seed,
        dtypes=("float32", "float64") if args.dtype == "both" else (args.dtype,),
        device=args.device,
        matmul_precision=args.matmul_precision,
        data_dir=args.data_dir,
        corpus_dir=args.corpus_dir,
    )


def _report(args, data, parity, config=None):
    epoch = args.epoch_optimizer or ("sgd" if args.model == "mlp" else "none")
    return parity.run(
        data.load(args.data_dir),
        model=args.model,
        config=config,
        dtypes=("float32", "float64") if args.dtype == "both" else (args.dtype,),
        steps=args.steps or BUILTIN_STEPS,
        recipes={"all": None, "none": ()}.get(args.optimizer, tuple(args.optimizer.split(","))),
        epoch_recipe=None if epoch == "none" else epoch,
        device=args.device,
        matmul_precision=args.matmul_precision,
        seed=args.seed,
        train_limit=args.train_limit,
        workers=1 if args.plant is not None else args.workers,
    )


def plant_recipes(name: str, model: str, optimizer: str, catalogue: dict) -> str:
    """The step recipes (``--optimizer``'s value, comma-joined) a run with fault ``name`` planted
    must run, so that the fault's code runs: its own recipes for a fault of an optimizer or a
    schedule (with ``all``, the default), the ones asked for when they include one of its own.

    Raises:
        JaxnetError: the model or the recipe asked for never reaches the fault's code (the
            report would pass with the fault in place); the message says why.
    """
    fault = catalogue[name]
    if model not in fault.models:
        raise JaxnetError(
            f"--plant {name}: a fault of the {' and '.join(fault.models)} JAX code ({fault.description}), "
            f"which --model {model} never runs"
        )
    if not fault.recipes:  # in the forward pass or the loss: every report runs it
        return optimizer
    if optimizer == "all":
        return ",".join(fault.recipes)
    if optimizer not in fault.recipes:
        raise JaxnetError(
            f"--plant {name}: {fault.description} bites only in the {' or '.join(fault.recipes)} steps, "
            f"which --optimizer {optimizer} does not run (drop --optimizer to run them)"
        )
    return optimizer
