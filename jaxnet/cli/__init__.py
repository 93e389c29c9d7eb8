"""The jaxnet command line: train | eval | predict | generate | parity | bench | plot | convert.

One module per subcommand, each with its flags (``add_arguments``) and its action (``run``);
none imports a framework until it runs. Errors print one line, ``jaxnet: error: ...``, and
exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxnet import distributed, process, versions
from jaxnet.errors import JaxnetError

COMMANDS = ("train", "eval", "predict", "generate", "parity", "bench", "plot", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"jaxnet.cli.{name}")
        doc = module.__doc__.strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``jaxnet ARGV``; return the exit status. A process in which this call joined a torch
    process group (a data-parallel worker) does not return: it exits with that status
    (:func:`jaxnet.distributed.leave`)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.argv = argv  # what a launcher hands on to the processes it starts
    late = process.prepare(shared=args.command == "parity", cache=True)
    torch_late = [k for k in late if k != "XLA_FLAGS"]
    if torch_late:  # torch came first (jaxnet.cli.main called from a program that imported it)
        print(f"jaxnet: warning: torch was imported before {', '.join(torch_late)} could be set; "
              "its results may not be bit-reproducible", file=sys.stderr)  # fmt: skip
    if "XLA_FLAGS" in late:  # JAX came first: XLA has read its flags
        print("jaxnet: warning: JAX had started before XLA's convolutions could be moved off YNNPACK; "
              "they run at XLA's default speed (docs/xla-cpu-conv.md)", file=sys.stderr)  # fmt: skip
    try:
        versions.check()  # an old framework: one line naming what is needed, not an AttributeError
        code = args.run(args, parser)
    except JaxnetError as err:
        print(f"jaxnet: error: {err}", file=sys.stderr)
        code = 2
    except OSError as err:
        print(f"jaxnet: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("jaxnet: interrupted", file=sys.stderr)
        code = 130
    return distributed.leave(code)
