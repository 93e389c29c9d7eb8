"""Small model pairs the port engine is tested on: each a torch module and its idiomatic NNX port.

- ``BNNet``: Conv2d -> BatchNorm2d -> ReLU -> Conv2d (stride 2) -> BatchNorm2d -> ReLU -> mean
  pool -> Linear, on ``[N, 1, 12, 12]`` images (channels-last port);
- ``MLP`` and ``CNN``: the built-in pairs' shapes in small (the built-in faults through compare);
- ``Block``: a transformer block on token ids and a padding mask: Embedding (tokens and
  positions), pre-LayerNorm causal ``nn.MultiheadAttention`` with a key padding mask, a GELU
  MLP, residuals, a final LayerNorm and a head tied to the token embedding.

Each NNX port is written as a Flax user writes it; :mod:`jaxnet.nn` supplies the one piece
torch's conventions need (BatchNorm's running variance from the unbiased batch variance).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from parity_tests.nnx_ports import NNXBN, NNXCNN, NNXMLP, NNXBlock, NNXUp, blank  # noqa: F401 (the pairs' NNX halves)


def crops(ds, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The pairs' real inputs: 12x12 crops (the centre) of the first ``n`` Fashion-MNIST
    training images of ``ds`` (a :class:`jaxnet.data.FashionMNIST`), and their labels."""
    return ds.train[:n].float_images()[:, :, 8:20, 8:20].copy(), ds.train.labels[:n]


class TorchBN(nn.Module):
    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class TorchMLP(nn.Module):
    """The tutorial MLP's shape at 12x12 inputs: Linear -> act -> Linear (square) -> act -> Linear."""

    def __init__(self, hidden: int = 16, act=nn.ReLU) -> None:
        super().__init__()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(144, hidden), act(), nn.Linear(hidden, hidden), act(), nn.Linear(hidden, 10)
        )

    def forward(self, x):
        return self.linear_relu_stack(x.flatten(1))


class TorchCNN(nn.Module):
    """examples/mnist's CNN in small: conv -> ReLU -> conv -> ReLU -> 2x2 max-pool -> dropout ->
    Linear, on 12x12 images (the port is channels-last: ``flatten={"fc": (c, 6, 6)}``)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(c * 36, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = self.dropout(torch.nn.functional.max_pool2d(x, 2))
        return self.fc(x.flatten(1))


class TorchUp(nn.Module):
    """A strided conv down, a ConvTranspose2d back up, a Linear head, on 12x12 images (the port is
    channels-last: ``flatten={"fc": (2, 12, 12)}``)."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, c, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(c, 2, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(2 * 144, 10)

    def forward(self, x):
        x = torch.relu(self.up(torch.relu(self.down(x))))
        return self.fc(x.flatten(1))


class TorchBlock(nn.Module):
    def __init__(
        self, vocab: int = 11, block: int = 8, e: int = 16, heads: int = 2, padding_idx=None
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, e, padding_idx=padding_idx)
        self.wpe = nn.Embedding(block, e)
        self.ln1 = nn.LayerNorm(e)
        self.attn = nn.MultiheadAttention(e, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(e)
        self.fc = nn.Linear(e, 4 * e)
        self.proj = nn.Linear(4 * e, e)
        self.ln_f = nn.LayerNorm(e)
        self.head = nn.Linear(e, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied
        self.register_buffer("causal", torch.ones(block, block).triu(1).bool(), persistent=False)

    def forward(self, ids, padding_mask):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t, device=ids.device))
        h = self.ln1(x)
        a, _ = self.attn(
            h, h, h, attn_mask=self.causal[:t, :t], key_padding_mask=~padding_mask, need_weights=False
        )
        x = x + a
        x = x + self.proj(torch.nn.functional.gelu(self.fc(self.ln2(x))))
        return self.head(self.ln_f(x))


def token_batch(n: int = 6, t: int = 8, vocab: int = 11, seed: int = 0):
    """Token ids, a padding mask (True = a real token; each row's tail padded) and next-token
    targets with padding as ignore_index -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, t)).astype(np.int64)
    lengths = rng.integers(t // 2, t + 1, n)
    mask = np.arange(t)[None, :] < lengths[:, None]
    targets = np.where(mask, np.roll(ids, -1, axis=1), -100).astype(np.int64)
    return (ids, mask), targets
