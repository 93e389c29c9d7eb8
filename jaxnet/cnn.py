"""The CNN of PyTorch's ``examples/mnist`` in Flax NNX: moved to :mod:`jaxnet.models.cnn`;
this name stays for the code and docs that import it."""

from jaxnet.models.cnn import (  # noqa: F401
    Masks,
    Net,
    _dropout,
    activations,
    build,
    dropout_masks,
    loss_fn,
    max_pool2d,
    nll_loss,
)

max_pool_2x2 = max_pool2d  # its name before 0e3d451 (jaxnet.fastpool.max_pool_2x2 is another function)
