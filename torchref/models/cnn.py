"""The CNN of PyTorch's ``examples/mnist``, with its attribute names (so state-dict keys match).

Mirrored by ``jaxnet/models/cnn.py``; ``torchref.cnn`` re-exports it.

``conv1 -> ReLU -> conv2 -> ReLU -> max_pool2d(2) -> dropout1 -> flatten -> fc1 -> ReLU ->
dropout2 -> fc2 -> log_softmax``, on ``[N, 1, 28, 28]`` images. State-dict keys:
``conv1.{weight,bias}`` (weight ``[c1, 1, 3, 3]``), ``conv2.*`` (``[c2, c1, 3, 3]``),
``fc1.*`` (``[hidden, c2 * 12 * 12]``), ``fc2.*`` (``[num_classes, hidden]``).

Dropout can be given explicitly: ``masks=(m1, m2)``, 0/1 tensors shaped like dropout1's and
dropout2's inputs (``[N, c2, 12, 12]`` and ``[N, hidden]``), are applied as ``nn.Dropout``
applies its own draw, ``x * (m / (1 - p))``, in any mode. The parity harness hands both
frameworks the same masks, so training steps with dropout can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Masks = tuple[torch.Tensor, torch.Tensor]


class Net(nn.Module):
    """``examples/mnist``'s ``Net``; the example's sizes are the defaults.

    Example:
        >>> model = Net()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        dropout1: float = 0.25,
        dropout2: float = 0.5,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, 1, dtype=dtype)
        self.conv2 = nn.Conv2d(c1, c2, 3, 1, dtype=dtype)
        self.dropout1 = nn.Dropout(dropout1)
        self.dropout2 = nn.Dropout(dropout2)
        self.fc1 = nn.Linear(c2 * 12 * 12, hidden, dtype=dtype)
        self.fc2 = nn.Linear(hidden, num_classes, dtype=dtype)

    def forward(self, x: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """``[N, 1, 28, 28] -> [N, num_classes]`` log-probabilities."""
        return activations(self, x, masks)["log_softmax"]


def _dropout(layer: nn.Dropout, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``layer(x)`` (train mode: a fresh draw; eval: identity), or ``mask`` applied as torch's
    own dropout applies its draw (``noise.div_(1 - p)``, then ``input * noise``)."""
    if mask is None:
        return layer(x)
    return x * (mask.to(x.dtype) / (1 - layer.p))


def activations(model: Net, x: torch.Tensor, masks: Masks | None = None) -> dict[str, torch.Tensor]:
    """Every intermediate output, in the example's order: ``conv1``, ``relu1``, ``conv2``,
    ``relu2``, ``pool``, ``dropout1`` (all NCHW), ``flatten``, ``fc1``, ``relu3``, ``dropout2``,
    ``fc2``, ``log_softmax``. ``forward`` is this function's last entry."""
    m1, m2 = masks if masks is not None else (None, None)
    out: dict[str, torch.Tensor] = {}
    out["conv1"] = h = model.conv1(x)
    out["relu1"] = h = F.relu(h)
    out["conv2"] = h = model.conv2(h)
    out["relu2"] = h = F.relu(h)
    out["pool"] = h = F.max_pool2d(h, 2)
    out["dropout1"] = h = _dropout(model.dropout1, h, m1)
    out["flatten"] = h = torch.flatten(h, 1)
    out["fc1"] = h = model.fc1(h)
    out["relu3"] = h = F.relu(h)
    out["dropout2"] = h = _dropout(model.dropout2, h, m2)
    out["fc2"] = h = model.fc2(h)
    out["log_softmax"] = F.log_softmax(h, dim=1)
    return out


def loss_fn(log_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The example's training loss: ``F.nll_loss`` (mean over the batch) of the log-probabilities."""
    return F.nll_loss(log_probs, y)


def from_config(fields: dict, dtype: torch.dtype | None = None) -> Net:
    """A fresh model of ``CNNConfig``'s fields, from torch's global RNG (jaxnet's registry calls it)."""
    f = fields
    return Net(f["channels"], f["hidden"], f["num_classes"], f["dropout1"], f["dropout2"], dtype=dtype)


def named_activations(model: Net, x: torch.Tensor, masks: dict | None = None) -> dict[str, torch.Tensor]:
    """:func:`activations` with the dropout masks given by name (``dropout1``, ``dropout2``)."""
    return activations(model, x, (masks["dropout1"], masks["dropout2"]) if masks else None)
