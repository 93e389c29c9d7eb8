"""``jaxnet parity record`` and ``jaxnet parity check``: a recorded torch reference, on the command line.

    jaxnet parity record --module mypkg.parity:torch_net --inputs mypkg.parity:batch \\
        --options mypkg.parity:OPTIONS --out tests/reference/net        # where torch is
    jaxnet parity check tests/reference/net --module mypkg.parity:port  # where it need not be

Each ``PKG.MODULE:NAME`` names an object in an importable module (the current directory is
searched first, then ``PYTHONPATH``); a function or a class is called with no arguments and its
result used. ``record --module``: the torch module; ``--inputs``: ``(inputs, targets)`` as
:func:`jaxnet.parity.record` takes them; ``--options``: a dict of ``record``'s other keyword
arguments (``loss``, ``optimizer``, ``steps``, ``flatten``, ``channels_last``, ...).
``check --module``: the NNX port; ``--rules``: the port's own layout rules (a dict), as for a
live comparison (code is not recorded). ``check`` imports no torch: it runs in a CI image
without it, prints one line when every row is within its bound, and otherwise exits 1 with
:func:`jaxnet.testing.assert_parity`'s message (the first difference, its diagnosis, the
failing rows, the full report's path).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

from jaxnet.errors import JaxnetError

SPEC = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def add_subcommands(p: argparse.ArgumentParser) -> None:
    """``record`` and ``check`` as sub-actions of ``jaxnet parity`` (which runs as before without one)."""
    doc = re.sub(r":func:|``", "", __doc__.split("\n\n", 2)[2])  # the docstring's prose, as plain text
    sub = p.add_subparsers(
        dest="parity_action",
        metavar="{record,check}",
        help="record a torch reference / check a port against one (jaxnet parity check -h)",
    )
    rec = sub.add_parser(
        "record",
        help="record the torch side of a comparison into a bundle directory",
        description="Record a torch module's reference (parity.record) into a bundle directory.\n\n" + doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument("--module", required=True, metavar="PKG.MODULE:NAME",
                     help="the torch module (or a function or class of no arguments making it)")  # fmt: skip
    rec.add_argument("--inputs", required=True, metavar="PKG.MODULE:NAME",
                     help="(inputs, targets), or a function of no arguments returning them (numpy; torch's layout)")  # fmt: skip
    rec.add_argument("--options", metavar="PKG.MODULE:NAME",
                     help="a dict of parity.record's keyword arguments (loss, optimizer, steps, flatten, "
                     "channels_last, relu_inputs, pool_inputs, dtypes, ...) (default: none, record's defaults)")  # fmt: skip
    rec.add_argument(
        "--out", type=Path, required=True, metavar="BUNDLE", help="the bundle directory to write"
    )
    rec.set_defaults(run=run_record)
    chk = sub.add_parser(
        "check",
        help="check an NNX port against a recorded reference, without torch",
        description="Check an NNX port against a recorded reference (no torch needed).\n\n" + doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chk.add_argument("bundle", type=Path, metavar="BUNDLE", help="a bundle directory written by record")
    chk.add_argument("--module", required=True, metavar="PKG.MODULE:NAME",
                     help="the NNX port (or a function or class of no arguments making it)")  # fmt: skip
    chk.add_argument("--rules", metavar="PKG.MODULE:NAME",
                     help="a dict of the port's own layout rules, torch module path -> jaxnet.rules.Rule (default: none)")  # fmt: skip
    chk.add_argument("--report-dir", type=Path,
                     help="where the full JSON report of a failure goes (default: $JAXNET_REPORT_DIR, "
                     "then the temporary directory)")  # fmt: skip
    chk.add_argument("--json", type=Path, help="also write the report as JSON, passed or not")
    chk.set_defaults(run=run_check)


def load(spec: str, flag: str):
    """The object ``spec`` (``package.module:name``) names; a function or class is called with
    no arguments and its result returned.

    Raises:
        JaxnetError: one line: a malformed spec, a module that does not import, a missing
            name, or a callable that needs arguments or raises.
    """
    m = SPEC.match(spec)
    if m is None:
        raise JaxnetError(f"{flag} {spec!r}: expected PKG.MODULE:NAME, e.g. mypkg.models:make_net")
    module_name, attr = m.groups()
    if os.getcwd() not in sys.path and "" not in sys.path:  # an installed `jaxnet` script has no cwd on it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure of the user's module: one line saying which and why
        raise JaxnetError(
            f"{flag} {spec}: cannot import {module_name} ({type(err).__name__}: {err})"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise JaxnetError(f"{flag} {spec}: {module_name} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        return obj
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise JaxnetError(f"{flag} {spec}: {attr} needs arguments; name a function of none") from None
    except ValueError:  # a builtin without a signature: just call it
        pass
    try:
        return obj()
    except Exception as err:
        raise JaxnetError(f"{flag} {spec}: {attr}() raised {type(err).__name__}: {err}") from None


def run_record(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    import torch

    from jaxnet.parity import bundle, record

    net = load(args.module, "--module")
    if not isinstance(net, torch.nn.Module):
        raise JaxnetError(f"--module {args.module}: a {type(net).__name__}, not a torch.nn.Module")
    data = load(args.inputs, "--inputs")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise JaxnetError(f"--inputs {args.inputs}: a {type(data).__name__}, not a pair (inputs, targets)")
    options = load(args.options, "--options") if args.options else {}
    allowed = set(inspect.signature(record).parameters) - {"torch_module", "inputs", "targets", "path"}
    if not isinstance(options, dict) or set(options) - allowed:
        what = (f"unknown {', '.join(sorted(set(options) - allowed))}" if isinstance(options, dict)
                else f"a {type(options).__name__}")  # fmt: skip
        raise JaxnetError(f"--options {args.options}: {what}, not a dict of {', '.join(sorted(allowed))}")
    path = record(net, *data, args.out, **options)
    size = sum(f.stat().st_size for f in path.iterdir())
    answers = len(json.loads((path / bundle.INDEX).read_text())["answers"])
    print(f"recorded {path}: {answers} answers of torch {type(net).__name__}, {size / 1e6:.2f} MB")
    return 0


def run_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from flax import nnx

    from jaxnet import parity
    from jaxnet.testing import assert_parity

    port = load(args.module, "--module")
    if not isinstance(port, nnx.Module):
        raise JaxnetError(f"--module {args.module}: a {type(port).__name__}, not a flax.nnx.Module")
    rules = load(args.rules, "--rules") if args.rules else None
    if rules is not None and not isinstance(rules, dict):
        raise JaxnetError(f"--rules {args.rules}: a {type(rules).__name__}, not a dict")
    report = parity.compare(args.bundle, port, rules=rules)
    if args.json:
        parity.write_json(report, args.json)
    try:
        assert_parity(report, report_dir=args.report_dir)
    except AssertionError as err:
        print(err, file=sys.stderr)
        return 1
    differ = "; machines differ" if "machines differ" in report.environment else ""
    print(f"parity check {args.bundle}: {parity.summary(report)} (recorded on "
          f"{report.environment.get('recorded on', '?')}{differ})")  # fmt: skip
    return 0
