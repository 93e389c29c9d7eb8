"""Recorded torch references: what the engine asked torch and what torch answered, on disk.

Polygraphy's idea, for training steps: the parity engine drives the torch side through a
handful of queries (activations, loss and gradients, buffers after a train-mode forward,
optimizer steps, states). :class:`Recorder` wraps each torch backend and writes every answer
under a key made of the backend's role, the query, a digest of its arguments and a digest of
the backend's state (every load and step folds into it). :class:`Replayer` answers the same
queries from the bundle in a process without torch, so a recorded check runs the very same
engine as a live one and reaches the same rows and verdicts.

A bundle is a directory: ``answers.safetensors`` (every array) and ``bundle.json`` (format
version, the torch side's description, the compare arguments, the environment it was recorded
in, and the index of answers). Written atomically; a bundle of another format or a damaged
one is a one-line error. Numpy, safetensors and json only: no framework.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jaxnet.errors import JaxnetError

FORMAT = 5  # 2: the bend and max-pool-tie probes and the outcome runs; 3: the relu'(0) probe at
# the batch's size, the probes' reversed batches, the float32 outcome run of a float64 check;
# 4: a second other order of the batch (rotated by half) in the BatchNorm order spreads;
# 5: the float64 reference's first step taken from the state the tie search loaded (three
# loads a step, not five: the loads are part of every later answer's key)
ARRAYS, INDEX = "answers.safetensors", "bundle.json"


def digest(*parts) -> str:
    """A stable digest of nested arrays, dicts, lists and scalars (dict order ignored)."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, tuple | list):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        elif isinstance(x, np.ndarray | np.generic):
            a = np.ascontiguousarray(x)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(x).encode())

    for p in parts:
        feed(p)
    return h.hexdigest()[:24]


class _Tracked:
    """A torch backend's queries and state changes, the state folded into a digest as it
    changes (every load, optimizer change and step). Subclasses say what a query returns
    (:meth:`_ask`) and what a change does besides (:meth:`_apply`)."""

    def __init__(self, name: str, dtype: str, role: str) -> None:
        self.role = f"{name}|{dtype}|{role}"
        self.state = "fresh"
        self.step = 0
        self.training = False
        self.train_dropout = False

    def _key(self, method: str, *args) -> str:
        return f"{self.role}|{method}|{self.training}|{self.state}|{digest(args)}"

    def _fold(self, what: str, *args) -> None:
        self.state = digest(self.state, what, args)

    def _ask(self, method: str, *args):
        raise NotImplementedError

    def _apply(self, method: str, *args) -> None:
        """The change itself (a recorder passes it on to torch; a replayer has nothing to do)."""

    # the queries
    def describe(self) -> str:
        return self._ask("describe")

    def state_dict(self):
        return self._ask("state_dict")

    def optimizer_state(self):
        return self._ask("optimizer_state")

    def activations(self, x, masks=None):
        return self._ask("activations", x, masks)

    def loss_and_grads(self, x, y, masks=None):
        return self._ask("loss_and_grads", x, y, masks)

    def buffers_after(self, x):
        return self._ask("buffers_after", x)

    def predict(self, images):
        return self._ask("predict", images)

    def train_steps(self, batches):
        result = self._ask("train_steps", batches)
        self._fold("train", batches, self.training)
        self.step += len(batches)
        return result

    # the changes
    def load_state_dict(self, state) -> None:
        self._apply("load_state_dict", state)
        self._fold("load", state)

    def set_optimizer(self, cfg, state=None, step: int = 0) -> None:
        self._apply("set_optimizer", cfg, state, step)
        self._fold("optimizer", repr(cfg), state, step)
        self.step = step

    def load_optimizer_state(self, state, step: int) -> None:
        self._apply("load_optimizer_state", state, step)
        self._fold("optimizer state", state, step)
        self.step = step

    def set_train_data(self, images, labels) -> None:
        self._apply("set_train_data", images, labels)
        self._fold("data", images, labels)

    def apply_gradients(self, grads) -> None:
        self._apply("apply_gradients", grads)
        self._fold("apply", grads)
        self.step += 1


class Recorder(_Tracked):
    """A torch backend whose answers are written to ``answers`` as the engine asks."""

    def __init__(self, inner, answers: dict, name: str, dtype: str, role: str) -> None:
        super().__init__(name, dtype, role)
        self.inner, self.answers = inner, answers
        self.name, self.dtype, self.config = inner.name, inner.dtype, inner.config

    def _ask(self, method: str, *args):
        self.inner.training = self.training
        result = getattr(self.inner, method)(*args)
        self.answers[self._key(method, *args)] = result
        return result

    def _apply(self, method: str, *args) -> None:
        self.inner.training = self.training
        getattr(self.inner, method)(*args)


class Replayer(_Tracked):
    """A torch backend's recorded answers, given in the same order of states as recorded.

    Raises (on a query the bundle does not hold): JaxnetError saying which, and why it can
    happen (the port broke a tie differently, so the engine asked torch something new).
    """

    def __init__(self, answers: dict, config, name: str, dtype: str, role: str) -> None:
        super().__init__(name, dtype, role)
        self.answers, self.config = answers, config
        self.name, self.dtype = "torch", dtype

    def _ask(self, method: str, *args):
        key = self._key(method, *args)
        if key not in self.answers:
            raise JaxnetError(
                f"the recorded torch reference holds no answer for {method} of {self.role.replace('|', ' ')} "
                "here (the port decided a tie differently, or the bundle was recorded with other arguments): "
                "record it again, or compare live"
            )
        return self.answers[key]


# ---------------------------------------------------------------------------- on disk


def _flatten(value, prefix: str, arrays: dict, seen: dict) -> object:
    """A JSON description of ``value`` with its arrays moved into ``arrays`` under ``prefix``;
    an array equal (dtype, shape, bytes) to one stored already points at that one (``seen``:
    digest -> name): the engine asks for the same weights and states under many keys."""
    if isinstance(value, np.ndarray | np.generic):
        a = np.asarray(value, order="C")  # (ascontiguousarray would make a 0-d counter 1-d)
        key = digest(a)
        if key not in seen:
            seen[key] = prefix
            arrays[prefix] = a
        return {"array": seen[key]}
    if isinstance(value, dict):
        return {"dict": {k: _flatten(v, f"{prefix}/{k}", arrays, seen) for k, v in value.items()}}
    if isinstance(value, tuple | list):
        return {"list": [_flatten(v, f"{prefix}/{i}", arrays, seen) for i, v in enumerate(value)]}
    if isinstance(value, float | int | str | bool) or value is None:
        return {"value": value}
    raise JaxnetError(f"cannot record a {type(value).__name__}")


def _unflatten(desc, arrays: dict):
    if "array" in desc:
        return arrays[desc["array"]]
    if "dict" in desc:
        return {k: _unflatten(v, arrays) for k, v in desc["dict"].items()}
    if "list" in desc:
        return tuple(_unflatten(v, arrays) for v in desc["list"])
    return desc["value"]


def save(path: str | Path, meta: dict, answers: dict) -> Path:
    """Write a bundle directory atomically: ``meta`` (JSON-able, may hold arrays) and the answers."""
    from safetensors.numpy import save as st_save

    from jaxnet.files import atomic_directory

    arrays: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    index = {"format": FORMAT, "meta": _flatten(meta, "meta", arrays, seen), "answers": {}}
    for i, (key, value) in enumerate(answers.items()):
        index["answers"][key] = _flatten(value, f"a{i}", arrays, seen)
    path = Path(path)
    with atomic_directory(path) as tmp:
        (Path(tmp) / ARRAYS).write_bytes(st_save(arrays))
        (Path(tmp) / INDEX).write_text(json.dumps(index, indent=0))  # key order kept: it is the call order
    return path


def load(path: str | Path) -> tuple[dict, dict]:
    """``(meta, answers)`` of a bundle.

    Raises:
        JaxnetError: not a bundle, another format version, or damaged files.
    """
    from safetensors.numpy import load as st_load

    path = Path(path)
    if not (path / INDEX).is_file() or not (path / ARRAYS).is_file():
        raise JaxnetError(
            f"{path}: not a recorded reference (expected {INDEX} and {ARRAYS}); make one with parity.record"
        )
    try:
        index = json.loads((path / INDEX).read_text())
        arrays = st_load((path / ARRAYS).read_bytes())
    except Exception as err:  # json's, safetensors' or the file system's: all mean a damaged bundle
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise JaxnetError(f"{path}: damaged recorded reference ({first})") from None
    if index.get("format") != FORMAT:
        raise JaxnetError(
            f"{path}: recorded reference format {index.get('format')!r}, this jaxnet reads format {FORMAT}"
        )
    for a in arrays.values():  # one array may answer several queries: none may change it
        a.setflags(write=False)
    try:
        meta = _unflatten(index["meta"], arrays)
        answers = {k: _unflatten(v, arrays) for k, v in index["answers"].items()}
    except (KeyError, TypeError) as err:
        raise JaxnetError(f"{path}: damaged recorded reference (missing {err})") from None
    return meta, answers
