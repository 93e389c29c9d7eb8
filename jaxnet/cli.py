"""``jaxnet`` command line: train | eval | predict | parity | bench | plot | convert.

Every command takes ``--backend {jax,torch}`` where it runs a model; nothing else branches on
the backend. Errors print one line, ``jaxnet: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from jaxnet.argtypes import finite_float, nonneg_int, positive_int
from jaxnet.config import (
    BACKENDS,
    DEVICES,
    DTYPES,
    OPTIMIZERS,
    SCHEDULES,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from jaxnet.errors import JaxnetError

# Recipe flags default to None so that a resumed run can tell "given" from "not given".
_RECIPE_DEFAULTS = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": None,
    "schedule": "constant",
    "batch_size": 64,
    "epochs": 10,
    "seed": 0,
    "no_shuffle": False,
    "dtype": "float32",
    "train_limit": 0,
}


def _common(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    if backend:
        p.add_argument("--backend", choices=BACKENDS, default="jax")
        p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--data-dir", type=Path, help="directory with the four Fashion-MNIST .gz files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the tutorial model (defaults: the tutorial's recipe)")
    _common(t)
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--lr", type=finite_float)
    t.add_argument("--momentum", type=finite_float)
    t.add_argument("--nesterov", action="store_const", const=True)
    t.add_argument("--weight-decay", type=finite_float, help="default: 0 (sgd, adam), 1e-2 (adamw, torch's)")
    t.add_argument("--schedule", choices=SCHEDULES, help="per-step learning-rate schedule")
    t.add_argument("--batch-size", type=positive_int)
    t.add_argument("--epochs", type=positive_int)
    t.add_argument("--seed", type=nonneg_int)
    t.add_argument("--no-shuffle", action="store_const", const=True, help="the tutorial's fixed order")
    t.add_argument("--dtype", choices=DTYPES)
    t.add_argument("--train-limit", type=nonneg_int, help="train on the first N images only (quick runs)")
    t.add_argument("--hidden", type=positive_int, nargs="+", default=[512, 512], help="hidden sizes")
    t.add_argument("--init", choices=("shared", "native"), default="shared",
                   help="shared: numpy weights from --seed, the same in both backends; native: each framework's RNG")  # fmt: skip
    t.add_argument("--save", type=Path, help="checkpoint (.safetensors) written after every epoch")
    t.add_argument("--resume", type=Path, help="continue from a checkpoint (from either backend)")
    t.add_argument("--metrics", type=Path, help="append one JSON line per epoch")
    t.add_argument("--plot", type=Path, help="PNG of loss and accuracy per epoch")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stdout is a terminal)")  # fmt: skip

    e = sub.add_parser("eval", help="evaluate a checkpoint on the 10,000 test images")
    _common(e)
    e.add_argument("--checkpoint", type=Path, required=True, help=".safetensors or tutorial .pth")
    e.add_argument("--batch-size", type=positive_int, default=64, help="for the per-batch mean loss")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("predict", help="predicted and actual class of test images")
    _common(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--index", type=nonneg_int, nargs="+", default=[0], help="test-set indices")

    pl = sub.add_parser("plot", help="overlay the metrics of runs (JSON lines from --metrics)")
    pl.add_argument("runs", type=Path, nargs="+")
    pl.add_argument("-o", "--output", type=Path, required=True)

    c = sub.add_parser("convert", help="convert weights between .pth and .safetensors")
    c.add_argument("source", type=Path)
    c.add_argument("target", type=Path)

    from jaxnet import bench, parity

    parity.add_arguments(
        sub.add_parser("parity", help="compare the two backends, layer by layer, step by step")
    )
    bench.add_arguments(
        sub.add_parser("bench", help="time both backends' training loops against the GEMM peak")
    )
    return parser


def _recipe(
    args: argparse.Namespace, parser: argparse.ArgumentParser, resumed: TrainConfig | None
) -> TrainConfig:
    """The training config from flags; when resuming, the checkpoint's, flags must agree."""
    given = {k: getattr(args, k) for k in _RECIPE_DEFAULTS if getattr(args, k) is not None}
    if resumed is not None:
        current = {
            **{
                k: getattr(resumed.optimizer, k)
                for k in ("lr", "momentum", "nesterov", "weight_decay", "schedule")
            },
            "optimizer": resumed.optimizer.name,
            "batch_size": resumed.batch_size,
            "epochs": resumed.epochs,
            "seed": resumed.seed,
            "no_shuffle": not resumed.shuffle,
            "dtype": resumed.dtype,
            "train_limit": resumed.train_limit,
        }
        for key, value in given.items():
            if key != "epochs" and value != current[key]:
                parser.error(
                    f"--{key.replace('_', '-')} {value} differs from the checkpoint's {current[key]}"
                )
        if (
            "epochs" in given
            and resumed.optimizer.schedule != "constant"
            and given["epochs"] != resumed.epochs
        ):
            parser.error(
                "--epochs cannot change with a learning-rate schedule (it decays over the whole run)"
            )
        values = {**current, **given}
    else:
        values = {**_RECIPE_DEFAULTS, **given}
    try:
        optim = OptimConfig(
            name=values["optimizer"],
            lr=values["lr"],
            momentum=values["momentum"],
            nesterov=values["nesterov"],
            weight_decay=values["weight_decay"],
            schedule=values["schedule"],
        )
        return TrainConfig(
            optimizer=optim,
            batch_size=values["batch_size"],
            epochs=values["epochs"],
            seed=values["seed"],
            shuffle=not values["no_shuffle"],
            dtype=values["dtype"],
            train_limit=values["train_limit"],
        )
    except JaxnetError as err:
        parser.error(str(err))


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import checkpoint

    resumed = checkpoint.load(args.resume) if args.resume else None
    if resumed is not None and resumed.train_config is None:
        raise JaxnetError(f"{args.resume}: holds weights only, no training state to resume")
    cfg = _recipe(args, parser, resumed.train_config if resumed else None)

    from jaxnet import data, run  # the heavy imports (jax, flax) after the flags are checked
    from jaxnet.backend import get_backend

    config = resumed.config if resumed else ModelConfig(hidden=tuple(args.hidden))
    if resumed is not None:
        run.check_resume(resumed, config, cfg)
    ds = data.load(args.data_dir)
    state = checkpoint.init_state_dict(config, cfg.seed, cfg.dtype) if args.init == "shared" else None
    backend = get_backend(
        args.backend, config, dtype=cfg.dtype, device=args.device, seed=cfg.seed, state=state
    )
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
        print(f"jaxnet: interrupted at step {stop.step}{where}", file=sys.stderr)
        return 130
    if args.plot:
        from jaxnet import plot

        rows = plot.read_metrics(args.metrics) if args.metrics else [vars(h) for h in history]
        plot.plot_runs({args.backend: rows}, args.plot)
    return 0


def _load_backend(args: argparse.Namespace):
    from jaxnet import checkpoint
    from jaxnet.backend import get_backend

    ckpt = checkpoint.load(args.checkpoint)
    return get_backend(args.backend, ckpt.config, dtype=str(ckpt.dtype), device=args.device, state=ckpt.model)


def cmd_eval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import data, run

    backend = _load_backend(args)
    test = data.load(args.data_dir).test
    correct, avg_loss = backend.evaluate(test.float_images(backend.dtype), test.labels, args.batch_size)
    if args.json:
        result = {
            "correct": correct,
            "total": len(test),
            "accuracy": correct / len(test),
            "avg_loss": avg_loss,
            "backend": backend.name,
            "checkpoint": str(args.checkpoint),
        }
        print(json.dumps(result))
    else:
        print(run.test_error_block(correct, len(test), avg_loss))
    return 0


def cmd_predict(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import data

    backend = _load_backend(args)
    test = data.load(args.data_dir).test
    bad = [i for i in args.index if i >= len(test)]
    if bad:
        parser.error(f"--index {bad[0]} is out of range (the test set has {len(test)} images)")
    logits = backend.predict(test.float_images(backend.dtype)[args.index])
    for i, row in zip(args.index, logits, strict=True):
        predicted, actual = data.CLASS_NAMES[int(row.argmax())], data.CLASS_NAMES[int(test.labels[i])]
        print(f'[{i}] Predicted: "{predicted}", Actual: "{actual}"')
    return 0


def cmd_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import plot

    runs = {p.stem: plot.read_metrics(p) for p in args.runs}
    plot.plot_runs(runs, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_convert(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from jaxnet import checkpoint

    ckpt = checkpoint.load(args.source)
    if args.target.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise JaxnetError("writing .pth needs torch: pip install 'jaxnet[torch]'") from None
        import io

        buffer = io.BytesIO()
        torch.save({k: torch.from_numpy(v.copy()) for k, v in ckpt.model.items()}, buffer)
        checkpoint.atomic_write(args.target, buffer.getvalue())
    else:
        checkpoint.save(args.target, checkpoint.Checkpoint(model=ckpt.model, config=ckpt.config))
    print(f"wrote {args.target} ({len(ckpt.model)} tensors, {ckpt.dtype})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "train": cmd_train,
        "eval": cmd_eval,
        "predict": cmd_predict,
        "plot": cmd_plot,
        "convert": cmd_convert,
    }
    if args.command in ("parity", "bench"):  # the harness commands live in their own modules
        commands[args.command] = importlib.import_module(f"jaxnet.{args.command}").main
    try:
        return commands[args.command](args, parser)
    except JaxnetError as err:
        print(f"jaxnet: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"jaxnet: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxnet: interrupted", file=sys.stderr)
        return 130
