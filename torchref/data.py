"""The tutorial's data pipeline: a map-style Dataset with ``ToTensor`` per sample.

torchvision's ``datasets.FashionMNIST(transform=ToTensor())`` does, per image,
``torch.from_numpy(img).to(torch.float32).div(255)`` with a channel axis; PyPI's torchvision
does not import beside the CPU torch wheel used here, so this is that transform, verbatim.
The ``DataLoader`` then collates 64 such tensors per batch: the slow path the tutorial uses.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def to_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """torchvision ``ToTensor`` for a ``[28, 28]`` uint8 image: ``[1, 28, 28]`` float32 in [0, 1]."""
    return (
        torch.tensor(image_u8).unsqueeze(0).to(torch.float32).div(255)
    )  # a copy: torch wants writable memory


class FashionMNISTDataset(Dataset):
    """``(image, label)`` pairs from uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``."""

    def __init__(self, images_u8: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images_u8, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.images[i]), int(self.labels[i])


def tutorial_loader(images_u8: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> DataLoader:
    """``DataLoader(training_data, batch_size=64)``: no shuffle, as in the tutorial."""
    return DataLoader(FashionMNISTDataset(images_u8, labels), batch_size=batch_size)
