"""The ResNet's augmentation, drawn identically for both backends (numpy only).

torchvision's ``RandomCrop(28, padding=4)`` then ``RandomHorizontalFlip()``: each image is
zero-padded by ``pad`` pixels on every side, a window of the original size is cut at a
uniformly drawn offset ``(dy, dx)`` in ``0 .. 2 * pad``, and the window is mirrored left to
right with probability 1/2. The draws come from ``(seed, step)`` alone (not from either
framework's RNG, not from the data loader's worker state), so the torch and JAX runs see
the same augmented batch at every step, and a resumed run the same as an uninterrupted one.

Example:
    >>> x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    >>> augment(x, seed=0, step=0).shape
    (2, 28, 28)
"""

from __future__ import annotations

import numpy as np

PAD = 4
_STREAM = 0x61756700  # "aug": keeps these draws apart from the batch order's and the text windows'


def draw(n: int, *, seed: int, step: int, pad: int = PAD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The offsets and flips of one batch of ``n``: ``dy, dx`` int64 in ``0..2*pad``, ``flip`` bool."""
    rng = np.random.default_rng([seed, step, _STREAM])
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.integers(0, 2, size=n).astype(bool)
    return dy, dx, flip


def crop_and_flip(
    images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray, pad: int = PAD
) -> np.ndarray:
    """Crop each zero-padded image at ``(dy[i], dx[i])`` and mirror it where ``flip[i]``.

    ``images``: ``[N, ..., H, W]`` (``[N, 28, 28]`` uint8 or ``[N, 1, 28, 28]`` floats: the
    last two axes are the image); output has the same shape and dtype. ``dy = dx = pad``
    and no flip is the identity.
    """
    x = np.asarray(images)
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    flat = x.reshape(n, -1, h, w)
    padded = np.pad(flat, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # zeros, as RandomCrop's fill=0
    rows = np.asarray(dy)[:, None] + np.arange(h)  # [N, H]
    cols = np.asarray(dx)[:, None] + np.arange(w)  # [N, W]
    cols = np.where(np.asarray(flip)[:, None], cols[:, ::-1], cols)  # the crop, mirrored
    # advanced indices around a slice put their broadcast dims first: [N, H, W, C]
    out = padded[np.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)).reshape(x.shape)


def augment(images: np.ndarray, *, seed: int, step: int, pad: int = PAD) -> np.ndarray:
    """Random crop with ``pad``-pixel zero padding, then a random horizontal flip, from ``(seed, step)``."""
    dy, dx, flip = draw(len(images), seed=seed, step=step, pad=pad)
    return crop_and_flip(images, dy, dx, flip, pad)
