"""The :class:`~jaxnet.backends.Backend` interface over a user's ``nn.Module`` (never imports jax).

What ``jaxnet.parity.compare`` drives on the torch side: any inputs (one array, a tuple of
positional arrays, a dict of keyword arrays; integer and bool arrays keep their dtype), any
output pytree, persistent buffers (BatchNorm's running statistics) carried in the state dict,
and two modes: eval, and train (BatchNorm on batch statistics; dropout off unless masks are
handed in, so both sides see the same draw).

Queries leave the model as they found it: ``activations`` and ``loss_and_grads`` restore the
buffers a train-mode forward moved; only ``train_steps`` and ``apply_gradients`` change state.

A registered family on this engine (the ResNet, the GPT: ``module=None``) is built from its
config and trained as ``jaxnet train`` trains: steps in train mode where the family trains
(BatchNorm), its dropouts drawn from torch's RNG seeded by ``(seed, step)``, its inputs
augmented (:mod:`jaxnet.augment`, from ``(seed, step)`` as the JAX side draws them), and
:meth:`TorchPortBackend.evaluate` in eval mode.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from jaxnet import batch, checkpoint, registry
from jaxnet.backends.host_data import HostData
from jaxnet.backends.torch import TorchBackend, _read_only, copy_into, torch_device
from jaxnet.config import OptimConfig, PortConfig
from jaxnet.distributed import Rank
from jaxnet.errors import JaxnetError
from torchref import capture

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def main_output(output, what: str = "torch module"):
    """The array a built-in loss reads: the output itself, a tuple's first element, or a
    dict's (or output object's) ``logits``."""
    leaves = capture.named_leaves("output", output)
    for key in ("output", "output.logits"):
        if key in leaves:
            return leaves[key]
    raise JaxnetError(
        f"the {what} returns {sorted(leaves)}: a built-in loss needs one array, a tuple led by it "
        "or a 'logits' field; pass loss=(torch_loss, jax_loss) instead"
    )


def loss_value(config: PortConfig, outputs, targets: torch.Tensor) -> torch.Tensor:
    """The mean loss torch's criteria give by default, over any leading shape: logits ``[..., V]``
    with targets ``[...]``; targets equal to ``ignore_index`` count in neither sum nor mean."""
    if not isinstance(config.loss, str):
        return config.loss[0](outputs, targets)
    out = main_output(outputs)
    if config.loss == "mse":
        return F.mse_loss(out, targets)
    flat, labels = out.reshape(-1, out.shape[-1]), targets.reshape(-1)
    if config.loss == "nll":
        return F.nll_loss(flat, labels, ignore_index=config.ignore_index)
    return F.cross_entropy(flat, labels, ignore_index=config.ignore_index)


class TorchPortBackend(HostData, TorchBackend):
    """A copy of a user's ``nn.Module``, cast to ``dtype``, driven through :class:`Backend`."""

    def __init__(
        self,
        config: PortConfig,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        state: dict[str, np.ndarray] | None = None,
        devices: int = 1,
        module: torch.nn.Module | None = None,
    ) -> None:
        if devices != 1:
            raise JaxnetError("the port engine (compare; --model resnet, gpt) runs on one device")
        self.config, self.dtype, self.seed = config, dtype, seed
        self.native = module is None  # a registered family, trained and evaluated by jaxnet
        self.train_dropout = self.native and any(p > 0 for p in config.dropouts.values())
        self.training = self.native and config.trains  # the mode steps run in (the engine sets it)
        self.augment = registry.augmentation(config) if self.native else None
        self._gather = None
        self.rank = Rank(0, 1)
        self.shards = 1
        self.device = torch_device(device)
        if module is None:
            with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
                torch.manual_seed(seed)
                module = registry.build("torch", config)
        self.model = copy.deepcopy(module).to(device=self.device)
        with torch.no_grad():  # floating parameters and buffers to dtype; counters stay integers
            for t in [*self.model.parameters(), *self.model.buffers()]:
                if t.is_floating_point():
                    t.data = t.data.to(_DTYPES[dtype])
        self.net = self.model
        self.cfg: OptimConfig | None = None
        self.optimizer = None
        self.scheduler = None
        self.step = 0
        self._data = None
        if state is not None:
            self.load_state_dict(state)

    def _put(self, x) -> torch.Tensor:
        return torch.tensor(np.array(x, order="C"), device=self.device)  # a 0-d counter stays 0-d

    # ------------------------------------------------------------------ state and modes

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and persistent buffers; a tied parameter's second name left out."""
        own = self.model.state_dict()
        return {k: own[k].detach().cpu().numpy().copy() for k in self.config.param_shapes()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        checkpoint.validate_state_dict(state, self.config, self.dtype)
        self._forget()
        own = self.model.state_dict()
        with torch.no_grad():
            for key in self.config.param_shapes():
                copy_into(own[key], state[key])

    def _mode(self, dropout: bool = False) -> None:
        """Train mode for BatchNorm; dropout modules off (masks stand in for their draws), or
        on with ``dropout`` (a family's training step, drawing from torch's RNG)."""
        self.model.train(self.training)
        for m in self.model.modules():
            if isinstance(m, torch.nn.Dropout | torch.nn.Dropout1d | torch.nn.Dropout2d | torch.nn.Dropout3d):
                m.train(dropout)

    @contextlib.contextmanager
    def _kept_buffers(self) -> Iterator[None]:
        """Whatever a forward does to the buffers is undone after the block."""
        saved = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        try:
            yield
        finally:
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    b.copy_(saved[k])

    def _inputs(self, x) -> tuple[tuple, dict]:
        return batch.args_kwargs(batch.tree_map(self._put, x))

    def _call(self, x):
        args, kwargs = self._inputs(x)
        try:
            return self.model(*args, **kwargs)
        except (TypeError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
            raise JaxnetError(f"the torch module failed on the inputs given: {first}") from None

    # ------------------------------------------------------------------ queries

    def _key(self, *trees) -> tuple:
        """The inputs of a query as a key of :meth:`_recall`: every leaf, its path, the mode."""
        out: list[np.ndarray] = [np.array(self.training)]
        for tree in trees:
            found = batch.leaves(tree)
            out += [np.array(list(found))] + [np.asarray(v) for v in found.values()]
        return tuple(out)

    def activations(self, x, masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        key = self._key(x) if masks is None else None
        if key is not None and (kept := self._recall("activations", key)) is not None:
            return dict(kept)
        self._mode()
        with torch.no_grad(), self._kept_buffers(), capture.capture(self.model, self._masks(masks)) as acts:
            out = self._call(x)
        acts = acts | capture.named_leaves("output", out)
        answer = {k: _read_only(v.detach().cpu().numpy()) for k, v in acts.items()}
        if key is not None:
            self._remember("activations", tuple(np.array(a) for a in key), answer)
        return dict(answer)

    def buffers_after(self, x) -> dict[str, np.ndarray]:
        """The buffers after one train-mode forward on ``x`` from the current state (the model
        is left as it was)."""
        keep, self.training = self.training, True
        self._mode()
        try:
            with torch.no_grad(), self._kept_buffers():
                self._call(x)
                return {k: self.model.state_dict()[k].cpu().numpy().copy() for k in self.config.buffers}
        finally:
            self.training = keep

    def loss_and_grads(
        self, x, y, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        key = self._key(x, y) if masks is None else None
        if key is not None and (kept := self._recall("loss_and_grads", key)) is not None:
            return kept[0], dict(kept[1])
        self._mode()
        self.model.zero_grad(set_to_none=True)
        with self._kept_buffers(), capture.capture(self.model, self._masks(masks)):
            loss = loss_value(self.config, self._call(x), batch.tree_map(self._put, y))
            loss.backward()
        tensors = {k: p.grad for k, p in self.model.named_parameters() if p.grad is not None}
        grads = {k: _read_only(g.cpu().numpy()) for k, g in tensors.items()}
        self.model.zero_grad(set_to_none=True)
        if key is not None:
            self._remember(
                "loss_and_grads", tuple(np.array(a) for a in key), (float(loss.detach()), grads, tensors)
            )
        return float(loss.detach()), dict(grads)

    # ------------------------------------------------------------------ steps

    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        assert self.optimizer is not None and self._data is not None, "set_optimizer and set_train_data first"
        losses = []
        for idx in batches:
            x, y = self._batch(idx)
            kept = self._recall("loss_and_grads", self._key(x, y))
            if kept is not None and not (self.training or self.train_dropout):
                # the gradient loss_and_grads computed from this state on this batch, in the same
                # mode (eval: no running statistics move, no dropout): the same bits a step computes
                self._apply_kept(kept[2])
                losses.append(torch.tensor(kept[0], dtype=_DTYPES[self.dtype]))
                continue
            self._forget()
            self._mode(dropout=self.train_dropout)
            self.optimizer.zero_grad()
            with self._dropout_rng():  # seeded from (seed, step): a resumed run draws the same masks
                loss = loss_value(self.config, self._call(x), batch.tree_map(self._put, y))
                loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
            self._after_step(1)
        self._mode()
        return torch.stack(losses).cpu().numpy() if losses else np.zeros(0)

    def evaluate(self, images, labels, batch_size: int = 64) -> tuple[int, float]:
        """``(correct, mean loss)`` in eval mode: correct counts the targets whose argmax is
        right; the loss is the mean over all targets (nats per example, or per character)."""
        keep, self.training = self.training, False
        self._mode()
        self.training = keep
        total, correct, count = 0.0, 0, 0
        n = batch.size(images)
        with torch.no_grad():
            for lo in range(0, n, batch_size):
                idx = np.arange(lo, min(n, lo + batch_size))
                y = self._put(batch.take(labels, idx))
                out = main_output(self._call(batch.take(images, idx)))
                flat, target = out.reshape(-1, out.shape[-1]), y.reshape(-1)
                valid = target != self.config.ignore_index
                counted = valid.sum()
                total = total + loss_value(self.config, out, y) * counted
                correct = correct + ((flat.argmax(-1) == target) & valid).sum()
                count = count + counted
        return int(correct), float(total) / max(int(count), 1)

    def predict(self, images) -> np.ndarray:
        keep, self.training = self.training, False
        self._mode()
        self.training = keep
        with torch.no_grad():
            return main_output(self._call(images)).cpu().numpy()
