"""``record`` a torch module's reference once; check an NNX port against it later, without torch.

    parity.record(torch_net, inputs, targets, "tests/reference/net", steps=3)   # where torch is
    report = parity.compare("tests/reference/net", port)                        # where it is not

Recording runs the comparison engine with torch on both sides (the side under test is the
torch module itself) and keeps every answer the reference gave (:mod:`jaxnet.parity.bundle`);
the recorded check runs the same engine with the port against those answers. Same rows, same
floors (measured where the bundle was made), same verdicts; the report says when the two
machines differ. One exception: after a divergence a tie explains, a live compare's outcome
rows also take torch continued from the port's state (:mod:`jaxnet.parity.outcomes`), which a
recording cannot hold; a recorded check's outcome rows say so in their note. A query the bundle cannot answer (the port put an example on the other side
of a tie, so the engine asks torch about a batch without it) is a one-line error.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jaxnet.config import OptimConfig
from jaxnet.errors import JaxnetError
from jaxnet.parity import bundle
from jaxnet.parity.arguments import Arguments, TorchSide, prepare
from jaxnet.parity.pairing import check_names, port_config
from jaxnet.parity.port import engine
from jaxnet.parity.report import Report


def record(
    torch_module,
    inputs,
    targets,
    path: str | Path,
    *,
    loss: str = "cross_entropy",
    optimizer: OptimConfig | None = None,
    steps: int = 10,
    batch_size: int | None = None,
    mapping: dict[str, str] | None = None,
    flatten: dict[str, tuple[int, int, int]] | None = None,
    channels_last: bool = False,
    relu_inputs=(),
    pool_inputs=(),
    ignore_index: int = -100,
    train: bool | None = None,
    dtypes: tuple[str, ...] = ("float32", "float64"),
    device: str = "cpu",
    matmul_precision: str = "highest",
    seed: int = 0,
) -> Path:
    """Write the torch side of ``compare`` to the bundle directory ``path`` (atomically).

    The arguments are :func:`jaxnet.parity.compare`'s, less the port; the port-specific ones
    (``mapping``, ``flatten``, ``channels_last``, ``relu_inputs``...) are recorded too, so the
    check needs only the bundle and the port. ``loss`` must be a name (a user's loss pair is
    code, not data). Returns ``path``.

    Example:
        >>> parity.record(torch_net, x, y, "tests/reference/cnn", loss="nll", steps=3)  # doctest: +SKIP
    """
    from jaxnet.backends import get_backend
    from jaxnet.parity import environment

    if not isinstance(loss, str):
        raise JaxnetError("record needs a named loss ('cross_entropy', 'nll', 'mse'): a loss pair is code")
    side, args, inputs, targets = prepare(
        torch_module, inputs, targets, loss=loss, optimizer=optimizer, steps=steps, batch_size=batch_size,
        mapping=mapping, flatten=flatten, channels_last=channels_last, relu_inputs=relu_inputs,
        pool_inputs=pool_inputs, ignore_index=ignore_index, train=train, dtypes=dtypes,
        matmul_precision=matmul_precision, seed=seed,
    )  # fmt: skip
    port = port_config(side, args, None, None)
    answers: dict = {}

    def factory(name: str, dtype: str, role: str):
        made = get_backend("torch", port, dtype=dtype, device=device, module=torch_module)
        return bundle.Recorder(made, answers, name, dtype, role) if name == "torch" else made

    report = engine(port, side, args, inputs, targets, factory, device)
    if not report.passed:  # torch against itself: a failure here is the engine's, not the port's
        raise JaxnetError(
            f"torch against itself did not pass ({report.first_failure().quantity}): not recorded"
        )
    import torch

    here = environment.machine()
    arithmetic = report.environment.get("float32 matmul arithmetic in force", "")
    meta = {
        "torch side": dataclasses.asdict(side),
        "arguments": _arguments_json(args),
        "inputs": inputs,
        "targets": targets,
        "environment": {
            "machine": here,
            "torch": torch.__version__,
            "torch device": report.environment.get("torch device", ""),
            "torch threads": str(torch.get_num_threads()),
            "torch arithmetic": arithmetic.split("torch ")[-1] if "torch " in arithmetic else "highest",
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        },
    }
    return bundle.save(path, meta, answers)


def compare_recorded(path: str | Path, nnx_module, *, rules=None, loss=None, device: str = "cpu") -> Report:
    """:func:`jaxnet.parity.compare` of ``nnx_module`` against the recorded reference at ``path``.

    ``rules``: the port's own layout rules, as for a live comparison (code is not recorded).
    """
    from jaxnet.backends import get_backend

    meta, answers = bundle.load(path)
    try:
        side = TorchSide(**meta["torch side"])
        args = _arguments_from_json(meta["arguments"])
        inputs, targets = meta["inputs"], meta["targets"]
    except (KeyError, TypeError) as err:
        raise JaxnetError(f"{path}: damaged recorded reference ({err})") from None
    side = dataclasses.replace(side, buffers=tuple(side.buffers), integers=tuple(side.integers))
    port = port_config(side, args, nnx_module, rules)
    check_names(side.state, nnx_module, port)

    def factory(name: str, dtype: str, role: str):
        if name == "torch":
            return bundle.Replayer(answers, port, name, dtype, role)
        return get_backend("jax", port, dtype=dtype, device=device, module=nnx_module)

    report = engine(port, side, args, inputs, targets, factory, device, recorded=meta["environment"])
    report.environment["model"] = f"torch {side.name} (recorded at {path}) / nnx {type(nnx_module).__name__}"
    return report


def _arguments_json(args: Arguments) -> dict:
    out = dataclasses.asdict(args)
    out["optimizer"] = dataclasses.asdict(args.optimizer)
    return out


def _tuples(value):
    """JSON's lists back as the tuples the dataclasses hold (their reprs are part of the keys)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _arguments_from_json(raw: dict) -> Arguments:
    raw = {k: _tuples(v) for k, v in raw.items()}
    raw["optimizer"] = OptimConfig(**raw["optimizer"])
    return Arguments(**raw)
