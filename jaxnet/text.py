"""A character corpus for the GPT: English fortunes from Debian's ``fortunes`` package (numpy only).

``apt-get install fortunes`` puts plain-text fortune files in ``/usr/share/games/fortunes``:
fortunes separated by lines holding a single ``%``. The corpus is a fixed set of those files
(:data:`FILES`: the English prose and quotation files with neither non-ASCII bytes nor
control characters, about 0.55 MB), each checked against its SHA-256, concatenated in that
order (the concatenation's SHA-256 is :data:`CORPUS_SHA256`). The vocabulary is the sorted
set of its characters; ids index it.

The split is fixed and by fortune, not by character offset, so both halves sample every
file: fortune ``i`` (counted over the whole corpus, empty entries dropped) is validation
when ``i % 10 == 9``, training otherwise; each split is its fortunes, each followed by
``"\\n%\\n"``, in corpus order (train 90% of the fortunes, validation 10%).

Training windows come from :func:`batches`: ``batch`` random offsets drawn from
``(seed, step)`` alone, so both backends see the same windows and a resumed run redraws
exactly those of an uninterrupted one. :func:`eval_windows` gives the non-overlapping
windows a validation loss averages over.

Example:
    >>> corpus = load()                                   # doctest: +SKIP
    >>> x, y = corpus.batches("train", block_size=64, batch=32, seed=0, step=0)  # doctest: +SKIP
    >>> corpus.decode(x[0][:20]), x.shape, (y[:, :-1] == x[:, 1:]).all()        # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxnet.errors import DataError

PACKAGE = "fortunes"  # the Debian package (it pulls in fortunes-min, which has ``riddles``)
SYSTEM_DIR = Path("/usr/share/games/fortunes")
SHA256 = {  # fortunes 1:1.99.1-7.3 (Debian 12); ASCII, no control characters
    "cookie": "5dc97eee96dcc5287c373be629482730d45f77b59da1287933c9c5f482a055eb",
    "food": "78077a65b9288df71e7b2a8e8258cd3b1005d1282f7c7e57ad53927f374df45d",
    "linuxcookie": "4f75959924ae5bb1955c30a5c985e641ec17cd5ebb7453d839f94b1988331202",
    "magic": "b9553a1d84d966db55a24a779206cc4565bf3686c9ecbc31215f654129e3166e",
    "medicine": "18b8c7b098e649024159c9d9f3e37a0832bbd2d5cf3e2317b313134761afd487",
    "paradoxum": "85228975016fe975065eaf0baf55980d32d26f9e2fa99f69da4696d11ac02036",
    "perl": "b19145eadf97c31add2e0a199d93ffa0eb92e00275c2724b7ad6b4e412113536",
    "riddles": "bcaaab907b156a18a8943f0768828b4f1a18d382497d0e2ef012fe6aaa27becc",
    "sports": "b71dd524d7bca888ec1014fb849a8a15cf58017c59127e572d393ef7632c35c8",
    "startrek": "7b2e4c235b99452b2de4c47d67aae0faac2ea508a2d644609e4ef5db7653c39c",
    "tao": "4adddc35a122bb233a16c076abc0be0326ea3a68594146a6baee3b5f6489e12b",
    "zippy": "b996a112c99a2d61782e1a9a1f3c5445122f18ac312485f2c78279e82ca33932",
}
FILES = tuple(SHA256)
CORPUS_SHA256 = "6fea030c51c651f7fb40cc75a1c4ebecb2ba75390c3f5c0efa72810af20ee322"  # 538,458 bytes
VALIDATION_EVERY = 10  # fortune i is validation when i % 10 == 9
_STREAM = 0x74657874  # "text": keeps batches' draws apart from data.epoch_order's (seed, epoch)
_SAMPLE_STREAM = 0x73616D70  # "samp": the sampler's uniforms


@dataclass(frozen=True)
class Corpus:
    """The text, its vocabulary and the two splits as int64 ids."""

    text: str
    vocab: str
    train: np.ndarray
    val: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Characters -> int64 ids.

        Raises:
            DataError: a character outside the vocabulary (named).
        """
        table = {c: i for i, c in enumerate(self.vocab)}
        missing = sorted({c for c in text if c not in table})
        if missing:
            raise DataError(f"characters not in the corpus vocabulary: {''.join(missing)!r}")
        return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: np.ndarray) -> str:
        """int ids -> the characters."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).ravel())

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def batches(
        self, split: str, block_size: int, batch: int, *, seed: int, step: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`batches` on the named split."""
        return batches(self.split(split), block_size, batch, seed=seed, step=step)


def batches(
    ids: np.ndarray, block_size: int, batch: int, *, seed: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` windows of ``ids`` at offsets drawn from ``(seed, step)``: inputs and next-character targets.

    Offsets are uniform on ``0 .. len(ids) - block_size - 1`` (nanoGPT's ``get_batch``), so
    ``y[b, t] = ids[offset_b + t + 1]`` is the character after ``x[b, t]``.

    Returns:
        ``(x, y)``, int64 ``[batch, block_size]`` each.

    Raises:
        DataError: a split shorter than ``block_size + 1`` or a size below 1.
    """
    index = offsets(len(ids), block_size, batch, seed=seed, step=step)[:, None] + np.arange(block_size + 1)
    windows = np.asarray(ids)[index]
    return windows[:, :-1], windows[:, 1:]


def offsets(n: int, block_size: int, batch: int, *, seed: int, step: int) -> np.ndarray:
    """The ``batch`` window offsets :func:`batches` draws from ``(seed, step)`` in a split of
    ``n`` characters: int64, uniform on ``0 .. n - block_size - 1``.

    Raises:
        DataError: a split shorter than ``block_size + 1`` or a size below 1.
    """
    if block_size < 1 or batch < 1:
        raise DataError(f"block_size and batch must be >= 1, got {block_size} and {batch}")
    if n <= block_size:
        raise DataError(f"a split of {n} characters has no window of {block_size} + 1")
    rng = np.random.default_rng([seed, step, _STREAM])
    return rng.integers(0, n - block_size, size=batch)


def eval_windows(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of ``ids`` in order, ``block_size`` apart (the tail shorter than a window is
    left out): inputs and targets, int64 ``[(len(ids) - 1) // block_size, block_size]``.

    Consecutive windows start ``block_size`` apart, so every character but the first is a
    target exactly once (up to the tail): a validation loss is their mean.
    """
    count = (len(ids) - 1) // block_size
    if count < 1:
        raise DataError(f"a split of {len(ids)} characters has no window of {block_size} + 1")
    index = np.arange(count)[:, None] * block_size + np.arange(block_size + 1)
    windows = np.asarray(ids)[index]
    return windows[:, :-1], windows[:, 1:]


def generate(
    logits_fn: Callable[[np.ndarray], np.ndarray],
    prompt: np.ndarray,
    new_tokens: int,
    *,
    block_size: int,
    seed: int,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> np.ndarray:
    """Sample ``new_tokens`` ids after ``prompt`` from any framework's model, the same way.

    ``logits_fn`` maps int64 ids ``[1, block_size]`` to logits ``[1, block_size, V]`` (a
    torch or a JAX model, wrapped to take and give numpy). It always gets one fixed-size
    window: the last ``block_size`` ids, right-padded with id 0 while the text is shorter;
    in a causal model the padding cannot reach the position read, the last real one, and one
    shape means one compilation in JAX. The next id is drawn by inverting the float64 CDF of
    ``softmax(logits / temperature)`` (restricted to the ``top_k`` largest) at a uniform from
    ``(seed, step)``: both frameworks draw the same ids wherever their logits agree to
    rounding (a draw at a CDF boundary within rounding could go either way).
    ``temperature=0`` takes the argmax.

    Raises:
        DataError: an empty prompt, ``new_tokens < 0``, ``temperature < 0`` or ``top_k < 1``.
    """
    prompt = np.asarray(prompt, np.int64).ravel()
    if len(prompt) == 0 or new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1):
        raise DataError(
            f"generate needs a non-empty prompt, new_tokens >= 0, temperature >= 0 and top_k >= 1, "
            f"got {len(prompt)} ids, {new_tokens}, {temperature}, {top_k}"
        )
    ids = list(prompt)
    uniforms = np.random.default_rng([seed, _SAMPLE_STREAM]).random(new_tokens)
    for step in range(new_tokens):
        context = ids[-block_size:]
        window = np.zeros((1, block_size), np.int64)
        window[0, : len(context)] = context
        logits = np.asarray(logits_fn(window), np.float64)[0, len(context) - 1]
        ids.append(_draw(logits, temperature, top_k, uniforms[step]))
    return np.asarray(ids[len(prompt) :], np.int64)


def _draw(logits: np.ndarray, temperature: float, top_k: int | None, u: float) -> int:
    """The id whose CDF interval holds ``u``, under ``softmax(logits / temperature)`` (top-k)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and top_k < len(z):
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
    p = np.exp(z - z.max())
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(z) - 1))


def read_text(directory: Path) -> str:
    """The corpus text: :data:`FILES` from ``directory``, each verified, concatenated.

    Raises:
        DataError: a file missing, unreadable or failing its checksum (one line, naming the
            file and the package to install).
    """
    parts = []
    for name in FILES:
        path = directory / name
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DataError(
                f"{path}: {err.strerror or 'unreadable'}; install the text corpus with `apt-get install {PACKAGE}`"
            ) from None
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHA256[name]:
            raise DataError(
                f"{path}: SHA-256 {digest[:12]}... differs from the {PACKAGE} package's {SHA256[name][:12]}...; "
                f"reinstall it with `apt-get install --reinstall {PACKAGE}`"
            )
        parts.append(raw)
    raw = b"".join(parts)
    if hashlib.sha256(raw).hexdigest() != CORPUS_SHA256:  # the files' order is part of the corpus
        raise DataError(f"the concatenated corpus from {directory} fails its SHA-256")
    return raw.decode("ascii")


def split_fortunes(text: str) -> tuple[str, str]:
    """The fixed split: fortune ``i`` to validation when ``i % 10 == 9``; each fortune ends in ``\\n%\\n``."""
    fortunes, lines = [], []
    for line in text.split("\n"):
        if line == "%":
            if lines:
                fortunes.append("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    if any(lines):
        fortunes.append("\n".join(lines))
    val = [f for i, f in enumerate(fortunes) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    train = [f for i, f in enumerate(fortunes) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    return "".join(f + "\n%\n" for f in train), "".join(f + "\n%\n" for f in val)


def load(directory: str | Path | None = None) -> Corpus:
    """Read, verify and split the corpus (cached per directory within a process)."""
    return _load(Path(directory or SYSTEM_DIR).resolve())


@functools.cache
def _load(directory: Path) -> Corpus:
    text = read_text(directory)
    vocab = "".join(sorted(set(text)))
    train, val = split_fortunes(text)
    table = np.zeros(128, dtype=np.int64)
    table[[ord(c) for c in vocab]] = np.arange(len(vocab))
    encode = lambda s: table[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]  # noqa: E731
    return Corpus(text=text, vocab=vocab, train=encode(train), val=encode(val))
