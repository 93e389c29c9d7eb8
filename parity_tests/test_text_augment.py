"""The GPT's corpus (the real fortunes files, checksummed) and the ResNet's augmentation (numpy)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from jaxnet import augment, text
from jaxnet.errors import DataError


@pytest.fixture(scope="module")
def corpus() -> text.Corpus:
    """The real corpus (`make data` installs the package; a missing corpus fails, never skips)."""
    return text.load()


def test_corpus_is_the_pinned_text_and_split(corpus):
    assert len(corpus.text) == 538_458  # CORPUS_SHA256 checked by load(); the byte count beside it
    assert corpus.vocab == "".join(sorted(set(corpus.text))) and corpus.vocab_size == 96
    assert corpus.decode(corpus.encode("Zippy!")) == "Zippy!"
    train, val = (corpus.decode(s) for s in (corpus.train, corpus.val))
    n_train, n_val = train.count("\n%\n"), val.count("\n%\n")
    assert n_val == (n_train + n_val) // 10  # every 10th fortune, of 5,4xx
    assert val.startswith("I have stripped off my dress")  # the 10th fortune of `cookie`
    assert len(corpus.train) + len(corpus.val) > 0.99 * len(corpus.text)  # only empty entries dropped


def test_a_missing_or_corrupt_file_is_one_line_naming_the_package(tmp_path):
    for name in text.FILES:
        shutil.copy(text.SYSTEM_DIR / name, tmp_path / name)
    text.read_text(tmp_path)  # the copy verifies
    raw = bytearray((tmp_path / "tao").read_bytes())
    raw[100] ^= 1
    (tmp_path / "tao").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"tao: SHA-256 .*`apt-get install --reinstall fortunes`") as err:
        text.read_text(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "perl").unlink()
    with pytest.raises(DataError, match=r"perl: .*`apt-get install fortunes`") as err:
        text.read_text(tmp_path)
    assert "\n" not in str(err.value)


def test_batches_are_windows_drawn_from_seed_and_step(corpus):
    x, y = corpus.batches("train", 32, 8, seed=3, step=5)
    assert x.shape == y.shape == (8, 32) and x.dtype == np.int64
    again = corpus.batches("train", 32, 8, seed=3, step=5)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])  # (seed, step) alone
    assert not np.array_equal(x, corpus.batches("train", 32, 8, seed=3, step=6)[0])
    assert not np.array_equal(x, corpus.batches("train", 32, 8, seed=4, step=5)[0])
    assert np.array_equal(y[:, :-1], x[:, 1:])  # targets: the next character
    ids = corpus.train
    haystack = ids.astype(np.uint8).tobytes()  # each row is a real window of the split
    assert all(
        np.r_[row, last].astype(np.uint8).tobytes() in haystack for row, last in zip(x, y[:, -1], strict=True)
    )
    with pytest.raises(DataError, match="no window"):
        text.batches(ids[:10], 10, 1, seed=0, step=0)


def test_eval_windows_cover_the_split_once(corpus):
    x, y = text.eval_windows(corpus.val, 64)
    count = (len(corpus.val) - 1) // 64
    assert x.shape == (count, 64)
    assert np.array_equal(x.ravel(), corpus.val[: count * 64])
    assert np.array_equal(y.ravel(), corpus.val[1 : count * 64 + 1])


def test_augmentation_is_drawn_from_seed_and_step(fmnist):
    x = fmnist.train.images[:64]
    a = augment.augment(x, seed=0, step=7)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert np.array_equal(a, augment.augment(x, seed=0, step=7))
    assert not np.array_equal(a, augment.augment(x, seed=0, step=8))
    dy, dx, flip = augment.draw(4096, seed=0, step=7)
    assert dy.min() == dx.min() == 0 and dy.max() == dx.max() == 2 * augment.PAD  # every offset
    assert 0.45 < flip.mean() < 0.55  # p = 1/2: 4096 draws put the mean within +-0.05 (6 sigma)
    # the same draw on uint8 images and on ToTensor's floats: one augmentation for both backends
    floats = fmnist.train[:64].float_images("float32")
    assert np.array_equal(
        augment.augment(floats, seed=0, step=7), floats.dtype.type(a[:, None]) / np.float32(255)
    )


def test_a_flip_is_a_flip_and_a_crop_a_shift(fmnist):
    x = fmnist.train.images[:3]
    n, p = len(x), augment.PAD
    centre = np.full(n, p)
    assert np.array_equal(augment.crop_and_flip(x, centre, centre, np.zeros(n, bool)), x)  # identity
    assert np.array_equal(augment.crop_and_flip(x, centre, centre, np.ones(n, bool)), x[:, :, ::-1])
    # offset (0, 2p): the window starts p rows above and p columns right of the image
    shifted = augment.crop_and_flip(x, np.zeros(n, int), np.full(n, 2 * p), np.zeros(n, bool))
    expected = np.zeros_like(x)
    expected[:, p:, : 28 - p] = x[:, : 28 - p, p:]
    assert np.array_equal(shifted, expected)
    # crop first, then mirror the crop (torchvision's order: RandomCrop, then RandomHorizontalFlip)
    both = augment.crop_and_flip(x, np.zeros(n, int), np.full(n, 2 * p), np.ones(n, bool))
    assert np.array_equal(both, expected[:, :, ::-1])


def copy_last(block_size: int):
    """A causal 'model' whose every position predicts its own token (logits 10 at it, 0 elsewhere)."""

    def logits_fn(window: np.ndarray) -> np.ndarray:
        assert window.shape == (1, block_size) and window.dtype == np.int64  # one shape, always
        return 10.0 * np.eye(5)[window]

    return logits_fn


def test_generate_reads_the_last_real_position_of_a_fixed_window():
    out = text.generate(copy_last(4), np.array([1, 3]), 6, block_size=4, seed=0, temperature=0)
    assert out.tolist() == [3] * 6  # not 0, the right padding's id
    out = text.generate(copy_last(4), np.array([2, 2, 4, 1, 4, 3]), 2, block_size=4, seed=0, top_k=1)
    assert out.tolist() == [3, 3]  # a prompt longer than the window: its last block_size ids


def test_generate_draws_from_the_softmax_by_seed():
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    fixed = lambda w: np.broadcast_to(np.log(probs), (*w.shape, 4))  # noqa: E731
    out = text.generate(fixed, np.array([0]), 2000, block_size=8, seed=1)
    assert np.array_equal(out[:100], text.generate(fixed, np.array([0]), 100, block_size=8, seed=1))
    assert not np.array_equal(out[:100], text.generate(fixed, np.array([0]), 100, block_size=8, seed=2))
    freq = np.bincount(out, minlength=4) / len(out)
    assert np.all(np.abs(freq - probs) <= 5 * np.sqrt(probs * (1 - probs) / len(out)))  # 5 sigma
    hot = text.generate(fixed, np.array([0]), 500, block_size=8, seed=1, temperature=0.25)
    # p^4 renormalised: 0.5^4 / (0.5^4 + 0.25^4 + 2 * 0.125^4) = 0.934; 5 sigma over 500 draws: 0.055
    assert np.mean(hot == 0) > 0.934 - 0.055
    with pytest.raises(DataError, match="non-empty prompt"):
        text.generate(fixed, np.array([], np.int64), 1, block_size=8, seed=0)
