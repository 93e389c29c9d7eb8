"""The port backends' training data, kept on the host: one batch per index array.

Framework-neutral numpy, shared by :mod:`jaxnet.backends.jax_port` and
:mod:`jaxnet.backends.torch_port`, so both draw a step's batch (and its augmentation) the same
way from ``(seed, step)``.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxnet import batch


class HostData:
    """Mixin: ``set_train_data`` and the host-side ``_batch`` of a port backend.

    The backend sets ``self.augment`` (``None`` or ``augment(x, seed=, step=)``), ``self.seed``
    and ``self.step``.
    """

    _data: tuple | None = None
    _gather: Callable | None = None

    def set_train_data(self, images, labels, gather: Callable | None = None) -> None:
        """The training data, kept on the host; ``gather(images, labels, idx) -> (x, y)`` makes
        a batch of an index array (default: the examples at ``idx``; text: windows at offsets)."""
        self._data, self._gather = (images, labels), gather

    def _batch(self, idx) -> tuple:
        """One training batch on the host, augmented where the family is, from ``(seed, step)``."""
        images, labels = self._data
        if self._gather is not None:
            x, y = self._gather(images, labels, idx)
        else:
            x, y = batch.take(images, idx), batch.take(labels, idx)
        if self.augment is not None:
            x = self.augment(x, seed=self.seed, step=self.step)
        return x, y
