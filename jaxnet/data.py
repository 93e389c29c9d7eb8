"""Fashion-MNIST for both backends: IDX reader, checksums, search path, batch order.

numpy only, so that the JAX side, the torch reference and the harness share one copy of the
data and one batch order. Images come out exactly as torchvision's ``ToTensor`` makes them
(``uint8 / 255`` in float32, shape ``[N, 1, 28, 28]``), labels as int64.

Where the files are looked for, in order:

1. ``data_dir`` (the ``--data-dir`` flag) or the ``JAXNET_DATA`` environment variable:
   when given, the files must be there (no silent fallback);
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
3. the user cache, ``$JAXNET_CACHE`` or ``$XDG_CACHE_HOME/jaxnet/fashion-mnist``;
4. a download from ``$JAXNET_MIRROR`` (default: the dataset's published mirror) into the cache.

Example:
    >>> ds = load()                                    # doctest: +SKIP
    >>> ds.train.images.shape, ds.train.labels.dtype   # doctest: +SKIP
    ((60000, 28, 28), dtype('int64'))
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxnet.errors import DataError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# SHA-256 of the *decompressed* files: Debian recompresses the .gz files, so their bytes
# differ from upstream while their content is identical.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FILES = tuple(f"{name}.gz" for name in SHA256)


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 ``[N, 28, 28]``, ``labels`` int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: slice | list[int] | np.ndarray) -> Split:
        """The examples at ``index`` (a slice, a list or an array of indices), as a split:
        ``ds.train[:64].float_images()`` converts 64 images, not all 60,000 before keeping 64."""
        if isinstance(index, int | np.integer):  # a split of one example: train[i : i + 1]
            raise TypeError(f"a split is indexed by a slice or indices, not {index!r}")
        return Split(images=self.images[index], labels=self.labels[index])

    def float_images(self, dtype: np.dtype | str = np.float32) -> np.ndarray:
        """``[N, 1, 28, 28]`` in [0, 1], as ``ToTensor`` computes it: ``x / 255`` in ``dtype``."""
        return to_float(self.images, dtype)[:, None]


class FashionMNIST:
    """The two splits of one directory, each read (and verified) when first used."""

    def __init__(self, source: Path, verify: bool = True) -> None:
        self.source, self.verify = source, verify

    @functools.cached_property
    def train(self) -> Split:
        return read_split(self.source, "train", verify=self.verify)

    @functools.cached_property
    def test(self) -> Split:
        return read_split(self.source, "t10k", verify=self.verify)


def to_float(images_u8: np.ndarray, dtype: np.dtype | str = np.float32) -> np.ndarray:
    """``uint8 -> dtype`` then divide by 255 in that dtype (bit-identical to ``ToTensor``).

    Done as a 256-entry lookup table of exactly those values: one pass over the images.
    """
    dtype = np.dtype(dtype)
    table = np.arange(256, dtype=dtype) / dtype.type(255)
    return table[images_u8]


# ---------------------------------------------------------------------------- IDX files


def parse_idx(raw: bytes, name: str, ndim: int) -> np.ndarray:
    """Parse IDX bytes: 2 zero bytes, type byte 0x08 (uint8), ndim byte, big-endian dims, data."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{name}: wrong magic {raw[:4].hex()}, expected 000008{ndim:02x}")
    if raw[3] != ndim:
        raise DataError(f"{name}: has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{name}: {what}: {len(raw)} bytes, header {dims} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_gz(path: Path, ndim: int, *, verify: bool = True) -> np.ndarray:
    """Read one ``.gz`` IDX file, checking structure and (if ``verify``) its SHA-256.

    Decompressing is most of the cost, so a verified file's content is kept in the user cache
    (:func:`verified_cache`) under the SHA-256 of the ``.gz`` it came from, and read from
    there when the same ``.gz`` is read again, after checking the content's SHA-256 once more:
    a corrupt cache entry is rebuilt, never trusted, and a changed ``.gz`` misses the cache.
    """
    expected = SHA256.get(path.name.removesuffix(".gz")) if verify else None
    if not path.is_file():
        raise DataError(f"{path}: missing")
    packed = path.read_bytes()
    cached = verified_cache() / f"{hashlib.sha256(packed).hexdigest()}.idx" if expected else None
    if cached is not None and cached.is_file():
        raw = cached.read_bytes()
        if hashlib.sha256(raw).hexdigest() == expected:
            return parse_idx(raw, str(path), ndim)
    try:
        raw = gzip.decompress(packed)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: not a readable gzip file ({err})") from None
    array = parse_idx(raw, str(path), ndim)
    if expected is not None:
        found = hashlib.sha256(raw).hexdigest()
        if found != expected:
            raise DataError(
                f"{path}: checksum mismatch: SHA-256 of content {found[:16]}..., expected {expected[:16]}..."
            )
        _keep(cached, raw)
    return array


def verified_cache() -> Path:
    """Where verified, decompressed files are kept: ``<cache>/verified``."""
    return cache_dir() / "verified"


def _keep(path: Path, raw: bytes) -> None:
    """Write ``raw`` to ``path`` atomically; a cache that cannot be written is skipped."""
    from jaxnet.files import atomic_write

    with contextlib.suppress(OSError):  # a full disk or a read-only home: no cache, no harm
        atomic_write(path, raw)


def read_split(directory: Path, prefix: str, *, verify: bool = True) -> Split:
    images = read_idx_gz(directory / f"{prefix}-images-idx3-ubyte.gz", 3, verify=verify)
    labels = read_idx_gz(directory / f"{prefix}-labels-idx1-ubyte.gz", 1, verify=verify)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{directory}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[1:] != (28, 28):
        raise DataError(f"{directory}: {prefix} images are {images.shape[1:]}, expected (28, 28)")
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{directory}: {prefix} has label {labels.max()}, expected 0..9")
    return Split(images=images, labels=labels.astype(np.int64))


# ---------------------------------------------------------------------------- locating


def cache_dir() -> Path:
    if env := os.environ.get("JAXNET_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxnet" / "fashion-mnist"


def _complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in FILES)


def download(directory: Path, mirror: str | None = None, timeout: float = 60.0) -> None:
    """Fetch the four files from ``mirror`` into ``directory``, each written atomically."""
    mirror = mirror or os.environ.get("JAXNET_MIRROR", DEFAULT_MIRROR)
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = directory / name
        if target.is_file():
            continue
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DataError(f"download of {url} failed: {reason}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def find_data_dir(data_dir: str | Path | None = None, *, allow_download: bool = True) -> Path:
    """Return the directory holding the four files, downloading into the cache if needed."""
    explicit = data_dir or os.environ.get("JAXNET_DATA")
    if explicit:
        directory = Path(explicit).expanduser()
        if not directory.is_dir():
            raise DataError(f"data directory {directory} does not exist")
        missing = [f for f in FILES if not (directory / f).is_file()]
        if missing:
            raise DataError(f"{directory}: missing {', '.join(missing)}")
        return directory
    for directory in (SYSTEM_DIR, cache_dir()):
        if _complete(directory):
            return directory
    if not allow_download:
        raise DataError(
            f"Fashion-MNIST not found in {SYSTEM_DIR} or {cache_dir()}; install the Debian "
            "package dataset-fashion-mnist or pass --data-dir"
        )
    download(cache_dir())
    return cache_dir()


@functools.lru_cache(maxsize=4)
def _load(directory: Path, verify: bool) -> FashionMNIST:
    return FashionMNIST(directory, verify)


def load(data_dir: str | Path | None = None, *, verify: bool = True) -> FashionMNIST:
    """Locate, verify and read Fashion-MNIST (cached per directory within a process)."""
    return _load(find_data_dir(data_dir).resolve(), verify)


# ---------------------------------------------------------------------------- batch order


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch, int64 ``[n]``; both backends consume this same array.

    Derived from ``(seed, epoch)`` alone, so a resumed run regenerates epoch ``e``'s order
    without replaying earlier epochs. ``shuffle=False`` is the tutorial's order.
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches of ``batch_size``, the last one shorter (as ``DataLoader`` does)."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
