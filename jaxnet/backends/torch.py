"""The :class:`~jaxnet.backends.Backend` interface over ``torchref`` (never imports jax).

Imported only by ``get_backend("torch", ...)`` and by the harness, so that the JAX-only
commands work without torch installed and a torch run never starts JAX.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

import torchref
from jaxnet import checkpoint, distributed, registry
from jaxnet.config import PREDICT_CHUNK, AnyModel, OptimConfig
from jaxnet.errors import JaxnetError
from torchref import capture
from torchref.models import cnn as tcnn

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees it, else the CPU; ``cuda`` must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise JaxnetError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(device)


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch's float32 matmul precision (``"highest"``, ``"high"``: TF32) for the block, then
    whatever was set before (``set_float32_matmul_precision`` is process-wide). ``"highest"``
    turns cuDNN's TF32 convolutions off too (``cudnn.allow_tf32`` is on by default, and
    ``set_float32_matmul_precision`` leaves it so)."""
    before, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision(precision)
    if precision == "highest":
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = cudnn


def tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A torch-owned copy of ``x`` on ``device``.

    Always a copy into torch's allocator: numpy memory is only 16-byte aligned, and a tensor
    aliasing it would make the kernels' alignment (and so, for MKL, the rounding) depend on
    where numpy happened to put the array.
    """
    return torch.tensor(np.ascontiguousarray(x), device=device)


def copy_into(dst: torch.Tensor, src: np.ndarray) -> None:
    """``dst.copy_(src)`` in one copy: on a CPU, numpy writes straight into the tensor's own
    memory (``tensor(src)`` then ``copy_`` copied twice; the parity engine loads states every
    step). The same values as ``copy_``, casts included (each element is converted alone);
    unlike ``copy_``, torch's version counter of ``dst`` does not move (autograd's check on
    tensors saved for backward): callers load between steps, never inside a graph."""
    if dst.device.type == "cpu" and dst.is_contiguous() and not dst.requires_grad:
        np.copyto(dst.numpy(), np.asarray(src), casting="unsafe")  # copy_ casts as freely
    else:  # copy_ moves and casts; a 0-d counter stays 0-d (np.array, not ascontiguousarray)
        dst.copy_(torch.from_numpy(np.array(src, order="C")))


def _data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` over the process group the environment describes (gloo on
    CPUs, NCCL on GPUs), joined here if nobody has yet: it averages the gradients of the
    processes' shares of each batch, so every process takes the same step."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_initialized():  # a lost peer ends a collective within the timeout, not never
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=60))
        distributed.joined_torch_group()
        atexit.register(dist.destroy_process_group)  # jaxnet's own workers leave by distributed.leave
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


_LOSSES = {"cross_entropy": torchref.loss_fn, "nll": tcnn.loss_fn}


def build(config: AnyModel, dtype: str) -> torch.nn.Module:
    """The config's model (its family's ``torchref.models`` file), initialised from torch's
    global RNG (fork and seed it first)."""
    return registry.build("torch", config, dtype=_DTYPES[dtype])


def _read_only(array: np.ndarray) -> np.ndarray:
    """A kept answer is handed out more than once: nobody may change it in place."""
    array.flags.writeable = False
    return array


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of one optimizer step: a function of the run's seed, the global step
    and the process only, so a resumed run draws the masks the uninterrupted one did."""
    return (seed * 1_000_003 + step) * 1_009 + rank


class TorchBackend:
    """A ``torchref`` model with ``torch.optim``; batches sliced from pre-made tensors (a user's
    module: :class:`jaxnet.backends.torch_port.TorchPortBackend`)."""

    name = "torch"

    def __init__(
        self,
        config: AnyModel,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        state: dict[str, np.ndarray] | None = None,
        devices: int = 1,
    ) -> None:
        self.config, self.dtype, self.seed = config, dtype, seed
        self.loss_fn = _LOSSES[config.loss]
        self.train_dropout = bool(config.dropouts)  # the CNN trains with dropout
        self.rank = distributed.torch_rank()
        if devices != self.rank.world:
            raise JaxnetError(
                f"--devices {devices} with torch runs {devices} processes: start it with jaxnet train "
                f"(it launches them) or torchrun --nproc-per-node {devices}; this process is "
                f"rank {self.rank.rank} of {self.rank.world}"
            )
        self.shards = self.rank.world  # ways each batch is split: one share per process
        self.device = torch_device(device)
        if self.device.type == "cuda" and self.rank.world > 1:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise JaxnetError(
                    f"--devices {devices}: torch sees {torch.cuda.device_count()} CUDA device(s)"
                )
            self.device = torch.device("cuda", local)
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays as it was
            torch.manual_seed(seed)
            self.model = build(config, dtype).to(self.device)
        self.net: torch.nn.Module = self.model  # what the steps call: the model, or its DDP wrapper
        if self.rank.world > 1:
            self.net = _data_parallel(self.model, self.device)
        self.cfg: OptimConfig | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.step = 0
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._host_data: tuple[np.ndarray, np.ndarray] | None = None
        if state is not None:
            self.load_state_dict(state)

    # The parity harness asks one state the same questions more than once (the free-running pair
    # and the teacher-forced reference both take torch's activations and gradient on the coming
    # batch, then the step computes that gradient again). The answers are a function of the
    # parameters and the inputs only (torch on MKL's strict CNR mode: bit-reproducible), so the
    # last answer of each query is kept until the parameters change, and a step on the batch
    # whose gradient is kept applies it instead of computing it again: the same bits.

    _memo: dict[str, tuple] | None = None  # query -> (its inputs, its answer)

    def _remember(self, query: str, key: tuple, answer):
        self._memo = (self._memo or {}) | {query: (key, answer)}
        return answer

    def _recall(self, query: str, key: tuple):
        """The kept answer to ``query`` on inputs ``key`` (arrays compared exactly), or None."""
        kept = (self._memo or {}).get(query)
        if kept is None or len(kept[0]) != len(key):
            return None
        same = all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(kept[0], key, strict=True)
        )
        return kept[1] if same else None

    def _forget(self) -> None:
        """The parameters changed: no kept answer holds."""
        self._memo = None

    def describe(self) -> str:
        where = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        ddp = (
            f", DistributedDataParallel rank {self.rank.rank} of {self.rank.world}"
            if self.rank.world > 1
            else ""
        )
        return f"torch {torch.__version__} on {self.device} ({where}, {torch.get_num_threads()} threads{ddp})"

    def agree(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process (a Ctrl-C seen by one stops all at one step)."""
        if self.rank.world == 1:
            return flag
        seen = torch.tensor([int(flag)])
        torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
        return bool(seen.item())

    def _put(self, x: np.ndarray) -> torch.Tensor:
        return tensor(x, self.device)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        checkpoint.validate_state_dict(state, self.config, self.dtype)
        self._forget()
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                copy_into(value, state[key])

    def _masks(self, masks: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
        return {k: self._put(m) for k, m in masks.items()} if masks else None

    def activations(self, x: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """In eval mode; ``masks`` replace the dropouts' own draws (by forward hooks)."""
        key = (np.asarray(x),) if masks is None else None
        if key is not None and (kept := self._recall("activations", key)) is not None:
            return dict(kept)
        self.model.eval()
        x_, masks_ = self._put(x), self._masks(masks)
        with torch.no_grad():
            acts = registry.family(self.config).module("torch").named_activations(self.model, x_, masks_)
        out = {k: _read_only(v.cpu().numpy()) for k, v in acts.items()}
        return dict(self._remember("activations", (key[0].copy(),), out)) if key is not None else out

    def loss_and_grads(
        self, x: np.ndarray, y: np.ndarray, masks: dict[str, np.ndarray] | None = None
    ) -> tuple[float, dict[str, np.ndarray]]:
        """In eval mode; ``masks`` replace the dropouts' own draws (by forward hooks)."""
        key = (np.asarray(x), np.asarray(y)) if masks is None else None
        if key is not None and (kept := self._recall("loss_and_grads", key)) is not None:
            return kept[0], dict(kept[1])
        self.model.eval()
        with capture.capture(self.model, self._masks(masks)):
            loss, grads = torchref.loss_and_grads(self.model, self._put(x), self._put(y), self.loss_fn)
        out = float(loss), {k: _read_only(g.cpu().numpy()) for k, g in grads.items()}
        if key is None:
            return out
        self._remember("loss_and_grads", tuple(a.copy() for a in key), (*out, grads))
        return out[0], dict(out[1])

    def set_optimizer(
        self, cfg: OptimConfig, state: dict[str, np.ndarray] | None = None, step: int = 0
    ) -> None:
        self.cfg = cfg
        self.optimizer = torchref.make_optimizer(
            self.model,
            cfg.name,
            cfg.lr,
            cfg.momentum,
            cfg.nesterov,
            cfg.weight_decay,
            cfg.betas,
            cfg.eps,
            cfg.rho,
            no_decay=cfg.no_decay,
            clip_norm=cfg.clip_norm,
        )
        self.load_optimizer_state(state, step)

    def load_optimizer_state(self, state: dict[str, np.ndarray] | None, step: int) -> None:
        assert self.optimizer is not None and self.cfg is not None, "set_optimizer first"
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:  # a fresh schedule starts from the base lr
            group["lr"] = group["initial_lr"] = self.cfg.lr
        if state:
            torchref.load_optimizer_state(self.model, self.optimizer, state, step)
        self.scheduler = torchref.make_scheduler(
            self.optimizer,
            self.cfg.schedule,
            self.cfg.total_steps,
            self.cfg.gamma,
            step,
            self.cfg.step_size,
            warmup_steps=self.cfg.warmup_steps,
        )
        self.step = step

    def optimizer_state(self) -> dict[str, np.ndarray]:
        assert self.optimizer is not None
        return torchref.optimizer_state(self.model, self.optimizer)

    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        assert self.optimizer is not None, "set_optimizer first"
        for name, param in self.model.named_parameters():
            param.grad = self._put(grads[name])
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._after_step(1)

    def _after_step(self, steps: int) -> None:
        self._forget()
        if self.scheduler is not None:
            for _ in range(steps):
                self.scheduler.step()
        self.step += steps

    def set_train_data(self, images: np.ndarray, labels: np.ndarray) -> None:
        self._data = (self._put(images), self._put(labels))
        self._host_data = (np.asarray(images), np.asarray(labels))

    def _kept_step(self, batches: list[np.ndarray]) -> np.ndarray | None:
        """One step on a batch whose loss and gradient :meth:`loss_and_grads` computed from
        this state: the optimizer applies them (``train_step`` would compute the same bits
        again: the same forward and backward, in eval mode, as steps here run without dropout).
        None where that does not hold."""
        if len(batches) != 1 or self.train_dropout or self.rank.world > 1 or self._host_data is None:
            return None
        images, labels = self._host_data
        kept = self._recall("loss_and_grads", (images[batches[0]], labels[batches[0]]))
        if kept is None:
            return None
        self._apply_kept(kept[2])
        return np.array([kept[0]], dtype=self.dtype)

    def _apply_kept(self, grads: dict[str, torch.Tensor]) -> None:
        """One optimizer step on gradients :meth:`loss_and_grads` kept (a parameter without one
        gets none, as after a backward that did not reach it)."""
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                param.grad = grads[name].clone() if name in grads else None
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._after_step(1)

    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        assert self.optimizer is not None and self._data is not None, "set_optimizer and set_train_data first"
        if type(self) is TorchBackend and (losses := self._kept_step(batches)) is not None:
            return losses
        self._forget()
        images, labels = self._data
        self.model.train(self.train_dropout)  # dropout in training only where the model trains with it
        losses = []
        r, world = self.rank.rank, self.rank.world
        try:
            for idx in batches:
                share = idx[r * len(idx) // world : (r + 1) * len(idx) // world]  # this process's slice
                i = torch.from_numpy(share).to(self.device)
                with self._dropout_rng():
                    losses.append(
                        torchref.train_step(self.net, self.optimizer, images[i], labels[i], self.loss_fn)
                    )
                self._after_step(1)
        except RuntimeError as err:  # gloo's "Connection closed by peer": the launcher names which
            if world == 1:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise JaxnetError(f"rank {r}: a collective failed ({first[:200]})") from None
        if not losses:
            return np.zeros(0)
        loss = torch.stack(losses)
        if world > 1:  # each share's mean; their mean is the whole batch's (equal shares)
            torch.distributed.all_reduce(loss)
            loss /= world
        return loss.cpu().numpy()

    @contextlib.contextmanager
    def _dropout_rng(self) -> Iterator[None]:
        """nn.Dropout draws from torch's global RNG: seeded per step here (and put back after),
        so that a run and its resumption draw the same masks."""
        if not self.train_dropout:
            yield
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(_step_seed(self.seed, self.step, self.rank.rank))
            yield

    def evaluate(self, images: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> tuple[int, float]:
        return torchref.evaluate(self.model, self._put(images), self._put(labels), batch_size, self.loss_fn)

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        with torch.no_grad():
            chunks = self._put(images).split(PREDICT_CHUNK)
            return torch.cat([self.model(c) for c in chunks]).cpu().numpy()
