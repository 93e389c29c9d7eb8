"""Files written so that a crash never leaves half of one, with the permissions the umask asks for.

numpy only: the safetensors format is written here (a canonical header, so equal tensors give
equal bytes) and read with the ``safetensors`` library.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
}  # I64: BatchNorm counters


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only set it, and
    setting it even briefly would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the classic dance
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0666 & ~umask``."""
    return 0o666 & ~_umask()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new, never a mix.

    A temporary file in the same directory, fsynced, renamed over ``path``, then the directory
    fsynced. The file gets ``0666 & ~umask``, like any file ``open(path, "w")`` creates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Fill a new directory that then replaces ``path`` as a whole.

    The block writes into a temporary directory beside ``path``; on success the old
    directory is renamed to ``.<name>.old``, the new one to ``path``, and the old one removed.
    At every moment ``path`` or ``.<name>.old`` holds a complete directory (:func:`settled`
    puts the old one back if a crash came between the two renames). On an exception the new
    directory is discarded and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settled(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_dir(tmp)
        old = _old(path)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # left over by a save that stopped while removing it
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def settled(path: str | Path) -> Path:
    """``path``, after putting back the previous directory if a save stopped between renames."""
    path = Path(path)
    if not path.exists() and _old(path).is_dir():
        os.replace(_old(path), path)
    return path


def current(path: str | Path) -> Path:
    """Where ``path``'s content is now: ``path``, or the previous directory if a save stopped
    between its two renames (read-only: nothing is moved)."""
    path = Path(path)
    return _old(path) if not path.exists() and _old(path).is_dir() else path


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """Serialise to the safetensors format with a canonical header (sorted keys).

    The ``safetensors`` library writes ``__metadata__`` from a hash map in an order that varies
    from call to call; this writer makes equal tensors byte-identical files. Format: an 8-byte
    little-endian header length, a JSON header padded with spaces to a multiple of 8, then the
    little-endian tensor bytes in header order. Read back by ``safetensors`` itself.
    """
    header: dict[str, dict] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name], order="C")  # keeps a 0-d counter 0-d (ascontiguousarray: 1-d)
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = dict(sorted(metadata.items()))
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file.

    Raises:
        ValueError: not a readable safetensors file (the message says why).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(str(err)) from None
    return tensors, metadata
