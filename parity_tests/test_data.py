"""The Fashion-MNIST reader: real files, the ToTensor conversion, search order, bad input."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from jaxnet import data
from jaxnet.errors import DataError


def test_real_files_shapes_dtypes_and_classes(fmnist):
    assert fmnist.train.images.shape == (60000, 28, 28)
    assert fmnist.test.images.shape == (10000, 28, 28)
    assert fmnist.train.labels.dtype == np.int64
    # Fashion-MNIST is balanced: 6000 / 1000 of each of the 10 classes.
    assert np.bincount(fmnist.train.labels).tolist() == [6000] * 10
    assert np.bincount(fmnist.test.labels).tolist() == [1000] * 10
    assert data.CLASS_NAMES[9] == "Ankle boot" and len(data.CLASS_NAMES) == 10
    # The quickstart's first test image is an ankle boot.
    assert fmnist.test.labels[0] == 9


def test_float_images_match_torchvision_to_tensor_bit_for_bit(fmnist):
    u8 = fmnist.test.images[:256]
    ours = fmnist.test[:256].float_images("float32")
    # torchvision's ToTensor: torch.from_numpy(img).to(float32).div(255), with a channel axis.
    theirs = torch.from_numpy(u8.copy()).unsqueeze(1).to(torch.float32).div(255).numpy()
    assert ours.shape == (256, 1, 28, 28) and ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert ours.min() == 0.0 and ours.max() == 1.0
    # A slice of the split converts to the same bits as the whole split, sliced; labels stay paired.
    part = fmnist.test[100:356]
    assert np.array_equal(part.float_images("float64"), fmnist.test.float_images("float64")[100:356])
    assert np.array_equal(part.labels, fmnist.test.labels[100:356]) and len(part) == 256
    with pytest.raises(TypeError, match="a slice or indices"):  # one example is test[i : i + 1]
        fmnist.test[3]


# ---------------------------------------------------------------------------- bad input


def _write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, cut: int = 0) -> None:
    header = (magic or bytes([0, 0, 8, array.ndim])) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw[: len(raw) - cut]))


def _small_set(directory: Path, n_train: int = 5, n_test: int = 3) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_generated_files_fail_the_checksum(tmp_path):
    _small_set(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: checksum mismatch"):
        data.read_split(tmp_path, "train")
    split = data.read_split(tmp_path, "train", verify=False)  # structure alone is fine
    assert split.images.shape == (5, 28, 28)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", r"train-labels-idx1-ubyte.gz: missing"),
        ("magic", r"train-labels-idx1-ubyte.gz: wrong magic 00000901"),
        ("truncated", r"train-labels-idx1-ubyte.gz: truncated: 12 bytes, header \(5,\) needs 13"),
        ("count", r"train has 5 images but 4 labels"),
        ("not gzip", r"train-labels-idx1-ubyte.gz: not a readable gzip file"),
        ("label range", r"train has label 12, expected 0..9"),
    ],
)
def test_broken_files_name_the_file_and_the_fault(tmp_path, breakage, message):
    _small_set(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    if breakage == "missing":
        labels.unlink()
    elif breakage == "magic":
        _write_idx(labels, np.zeros(5), magic=bytes([0, 0, 9, 1]))
    elif breakage == "truncated":
        _write_idx(labels, np.zeros(5), cut=1)
    elif breakage == "count":
        _write_idx(labels, np.zeros(4))
    elif breakage == "not gzip":
        labels.write_bytes(b"this is not gzip")
    elif breakage == "label range":
        _write_idx(labels, np.full(5, 12))
    with pytest.raises(DataError, match=message):
        data.read_split(tmp_path, "train", verify=False)


def test_explicit_data_dir_is_strict(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXNET_DATA", raising=False)
    with pytest.raises(DataError, match="does not exist"):
        data.find_data_dir(tmp_path / "nowhere")
    _small_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte\.gz"):
        data.find_data_dir(tmp_path)
    monkeypatch.setenv("JAXNET_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte\.gz"):
        data.find_data_dir()


# ---------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving copies of the real files."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in data.FILES:
        shutil.copy(data.find_data_dir() / name, root / name)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root)
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_into_cache_from_a_mirror(tmp_path, monkeypatch, mirror):
    root, url = mirror
    cache = tmp_path / "cache"
    monkeypatch.delenv("JAXNET_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("JAXNET_CACHE", str(cache))
    monkeypatch.setenv("JAXNET_MIRROR", url)
    assert data.find_data_dir() == cache
    for name in data.FILES:
        assert (
            hashlib.sha256((cache / name).read_bytes()).digest()
            == hashlib.sha256((root / name).read_bytes()).digest()
        )
    split = data.read_split(cache, "t10k")  # verified against the published SHA-256
    assert len(split) == 10000
    assert not list(cache.glob(".*"))  # no temporary files left behind


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch, mirror):
    root, url = mirror
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.delenv("JAXNET_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAXNET_MIRROR", url)
    with pytest.raises(DataError, match=r"download of http://127.0.0.1:\d+/t10k-labels-idx1-ubyte.gz failed"):
        data.find_data_dir()


# ---------------------------------------------------------------------------- batch order


def test_epoch_order_is_a_seeded_permutation():
    a = data.epoch_order(1000, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, data.epoch_order(1000, seed=3, epoch=0))
    assert not np.array_equal(a, data.epoch_order(1000, seed=3, epoch=1))
    assert not np.array_equal(a, data.epoch_order(1000, seed=4, epoch=0))
    assert np.array_equal(data.epoch_order(10, seed=3, epoch=5, shuffle=False), np.arange(10))


def test_batch_slices_cover_everything_like_dataloader():
    slices = data.batch_slices(60000, 64)
    assert len(slices) == 938  # 937 full batches and a tail of 32
    assert slices[-1] == slice(59968, 60000)
    assert sum(s.stop - s.start for s in slices) == 60000


def test_verified_content_is_cached_and_a_corrupt_cache_is_never_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXNET_CACHE", str(tmp_path / "cache"))
    source = data.find_data_dir() / "t10k-labels-idx1-ubyte.gz"
    first = data.read_idx_gz(source, 1)
    [entry] = data.verified_cache().glob("*.idx")  # named by the SHA-256 of the .gz it came from
    assert entry.name == hashlib.sha256(source.read_bytes()).hexdigest() + ".idx"
    tampered = bytearray(entry.read_bytes())
    tampered[-1] = (tampered[-1] + 1) % 10  # one label changed, still a well-formed file
    entry.write_bytes(bytes(tampered))
    again = data.read_idx_gz(source, 1)
    assert np.array_equal(first, again)  # read from the .gz again, not from the bad cache
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == data.SHA256["t10k-labels-idx1-ubyte"]  # rebuilt
