"""The CNN of PyTorch's ``examples/mnist``: moved to :mod:`torchref.models.cnn`; this name stays
for the code and docs that import it."""

from torchref.models.cnn import Masks, Net, _dropout, activations, loss_fn  # noqa: F401
