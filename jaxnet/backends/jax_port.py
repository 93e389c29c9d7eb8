"""The :class:`~jaxnet.backends.Backend` interface over a user's Flax NNX port (never imports torch).

The mirror of :mod:`jaxnet.backends.torch_port`. The port is split once into
``(graphdef, params, batch statistics, the rest)``; every call is a jitted pure function of
them. Two graphdefs hold the two modes: eval (``use_running_average=True``) and train (batch
statistics, which come back as an output, as torch's running buffers move in place). Dropout
stays deterministic unless masks are handed in.

Parameters, statistics, gradients and optimizer buffers cross in torch's names and layouts by
the rule of each torch module (:class:`jaxnet.rules.PortLayout`); ``num_batches_tracked``,
which NNX has no counterpart for, is counted here: one per train-mode step.

A registered family on this engine (the ResNet, the GPT: ``module=None``) is built from its
config and trained as ``jaxnet train`` trains: steps in train mode where the family trains
(BatchNorm), its dropouts drawn from JAX's RNG by ``(seed, step)``, its inputs augmented
(:mod:`jaxnet.augment`, from ``(seed, step)`` as torch's side draws them), and
:meth:`JaxPortBackend.evaluate` in eval mode.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxnet import batch, capture, checkpoint, registry
from jaxnet import model as jmodel
from jaxnet import train as jtrain
from jaxnet.backends.host_data import HostData
from jaxnet.backends.jax import _INIT, _host, _in_mode, jax_device
from jaxnet.config import OptimConfig, PortConfig
from jaxnet.distributed import Rank
from jaxnet.errors import JaxnetError
from jaxnet.layout import keys
from jaxnet.rules import NNX_CLASSES, PortLayout, channel_first, channel_last


def main_output(output):
    """The array a built-in loss reads (as ``torch_port.main_output``)."""
    leaves = capture.named_leaves("output", output)
    for key in ("output", "output.logits"):
        if key in leaves:
            return leaves[key]
    raise JaxnetError(f"the nnx module returns {sorted(leaves)}: pass loss=(torch_loss, jax_loss)")


def port_loss(outputs, targets, loss, ignore_index: int) -> jax.Array:
    """torch's default mean: cross-entropy or NLL over any leading shape (logits ``[..., V]``)
    without the ``ignore_index`` targets, MSE, or the user's JAX loss."""
    if not isinstance(loss, str):
        return loss[1](outputs, targets)
    out = main_output(outputs)
    if loss == "mse":
        return jnp.mean(jnp.square(out - targets))
    flat, labels = out.reshape(-1, out.shape[-1]), targets.reshape(-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    if loss == "nll":
        per = -jnp.take_along_axis(flat, safe[:, None], axis=1)[:, 0]
    else:
        per = optax.softmax_cross_entropy_with_integer_labels(flat, safe)
    return jnp.sum(jnp.where(valid, per, 0)) / jnp.sum(valid)


def _merge(graphdef, params, stats, rest):
    return nnx.merge(
        graphdef, params, stats, rest, copy=True
    )  # fresh Variables: BatchNorm may update them in this trace


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, params, stats, rest, x, masks):
    """``(outputs, batch statistics after the forward)``."""
    model = _merge(graphdef, params, stats, rest)
    args, kwargs = batch.args_kwargs(x)
    out = capture.forward(model, None, masks, args, kwargs)
    return out, nnx.state(model, nnx.BatchStat)


@functools.partial(jax.jit, static_argnums=(0,))
def _activations(graphdef, params, stats, rest, x, masks):
    model = _merge(graphdef, params, stats, rest)
    args, kwargs = batch.args_kwargs(x)
    out, found = capture.activations(model, None, masks, args, kwargs)
    return found | capture.named_leaves("output", out)


def _loss(params, graphdef, stats, rest, x, y, masks, loss, key=None):
    model = _merge(graphdef, params, stats, rest)
    args, kwargs = batch.args_kwargs(x)
    out = capture.forward(model, None, masks, args, kwargs, key=key)
    return port_loss(out, y, *loss), nnx.state(model, nnx.BatchStat)


_GRADS = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnums=(1, 7))


@functools.partial(jax.jit, static_argnums=(0, 6))
def _evaluate(graphdef, params, stats, rest, x, y, loss):
    """``(summed loss, correct, targets)`` of one batch in eval mode: the loss is the mean times
    the targets counted in it, so batches of any size add up to the mean over all targets."""
    model = _merge(graphdef, params, stats, rest)
    args, kwargs = batch.args_kwargs(x)
    out = main_output(capture.forward(model, None, None, args, kwargs))
    flat, labels = out.reshape(-1, out.shape[-1]), y.reshape(-1)
    counted = jnp.sum(labels != loss[1])
    correct = jnp.sum((jnp.argmax(flat, axis=-1) == labels) & (labels != loss[1]))
    return port_loss(out, y, *loss) * counted, correct, counted


def _step(graphdef, tx, loss, params, stats, rest, opt_state, x, y, key=None):
    (value, stats), grads = jax.value_and_grad(_loss, has_aux=True)(
        params, graphdef, stats, rest, x, y, None, loss, key
    )
    params, opt_state = jtrain.apply_gradients(tx, params, opt_state, grads)
    return params, stats, opt_state, value


_COMPILED: dict[tuple, tuple] = {}


def _optimizer(graphdef, cfg: OptimConfig, dtype: str, loss, layout) -> tuple:
    """``(tx, step, apply)`` for one port, recipe and dtype, jitted once."""
    if cfg.schedule == "constant":
        cfg = replace(cfg, total_steps=0)
    key = (graphdef, cfg, dtype, loss, _names_key(layout) if cfg.no_decay else None)
    if key not in _COMPILED:
        # the layout only where it is read (decay masks by torch name): faults stand in for make_optimizer(cfg, dtype)
        tx = jtrain.make_optimizer(cfg, dtype, layout) if cfg.no_decay else jtrain.make_optimizer(cfg, dtype)
        _COMPILED[key] = (
            tx,
            jax.jit(functools.partial(_step, graphdef, tx, loss)),
            jax.jit(functools.partial(jtrain.apply_gradients, tx)),
        )
    return _COMPILED[key]


def _names_key(layout) -> str:
    """What a decay mask reads of a layout: the torch names (``torch_name``), not the rules,
    which are functions whose repr (an address) differs on every ``compare`` call and made each
    call trace and compile its steps again."""
    return repr(replace(layout, rules={}) if isinstance(layout, PortLayout) else layout)


def clear_caches() -> None:
    """Forget compiled steps and programs (a planted fault swapped a function)."""
    _COMPILED.clear()
    for jitted in (_forward, _activations, _GRADS, _evaluate):
        jitted.clear_cache()


def _set_mode(model: nnx.Module, train: bool) -> None:
    """eval everywhere; in train mode BatchNorm normalises with (and updates) batch statistics."""
    model.eval()
    if train:
        for _, sub in nnx.iter_modules(model):
            if isinstance(sub, nnx.BatchNorm):
                sub.use_running_average = False


def _dotted(tree) -> dict[str, object]:
    return {".".join(keys(p)): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


class JaxPortBackend(HostData):
    """A user's NNX module as ``(graphdef, params, stats, rest)``, driven through :class:`Backend`."""

    name = "jax"

    def __init__(
        self,
        config: PortConfig,
        *,
        dtype: str = "float32",
        device: str = "auto",
        seed: int = 0,
        state: dict[str, np.ndarray] | None = None,
        devices: int = 1,
        module: nnx.Module | None = None,
    ) -> None:
        if devices != 1:
            raise JaxnetError("the port engine (compare; --model resnet, gpt) runs on one device")
        self.config, self.dtype, self.seed = config, dtype, seed
        self.device = jax_device(device)
        self.mesh, self.shards, self.rank = None, 1, Rank(0, 1)
        self.native = module is None  # a registered family, trained and evaluated by jaxnet
        self.training = self.native and config.trains  # the mode steps run in (the engine sets it)
        self.train_dropout = self.native and any(p > 0 for p in config.dropouts.values())
        self.augment = registry.augmentation(config) if self.native else None
        self.step, self.tx = 0, None
        self._data = None
        self._gather = None
        with jax.enable_x64(dtype == "float64"), jax.default_device(self.device):
            if module is None:  # given weights, built abstractly: nothing initialised or compiled
                make = lambda: registry.build("jax", config, seed=seed, dtype=dtype)  # noqa: E731
                model = make() if state is None else nnx.eval_shape(make)
            else:
                model = nnx.clone(module)
            capture.share_masks(model)  # its dropouts take masks handed in (by path), else draw their own
            sequential, classes = set(), {}
            for path, sub in nnx.iter_modules(model):
                dotted = ".".join(map(str, path))
                if isinstance(sub, nnx.Dropout):
                    sub.rngs = None  # masks are handed in; no stream of its own
                if isinstance(sub, nnx.Sequential):
                    sequential.add(dotted)
                _run_in(sub, dtype)
                classes[dotted] = type(sub)
            self.layout = replace(config.layout, sequential=frozenset(sequential))
            self._mask_paths = {self.layout.torch_module(p.split(".")): p for p in classes}
            _check_classes(self.layout, classes)
            _set_mode(model, False)
            self.graphdefs = {False: nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]}
            _set_mode(model, True)
            graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
            self.graphdefs[True] = graphdef
            # cast on the host: an eager astype compiles one program per leaf's shape (16 for
            # e13's ResNet); an abstract leaf (state given) is replaced by load_state_dict below
            cast = lambda a: (  # noqa: E731
                jax.device_put(np.asarray(a, dtype), self.device)
                if isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype
                else a
            )
            if module is not None:  # built abstractly (nnx.eval_shape): zeros, replaced by torch's weights
                _check_abstract(model)
                params, stats, rest = (jax.tree.map(self._blank, t) for t in (params, stats, rest))
            self.params, self.stats = jax.tree.map(cast, params), jax.tree.map(cast, stats)
            self.rest = rest
        shapes = {k: tuple(v.shape) for k, v in (_dotted(self.params) | _dotted(self.stats)).items()}
        self.layout = replace(
            self.layout, names=self.layout.leaf_names(shapes)
        )  # decay masks read torch names
        self.tracked = {k: 0 for k in config.integer_keys}  # num_batches_tracked, torch's counters
        if state is not None:
            self.load_state_dict(state)

    def _blank(self, leaf):
        """A port's abstract leaf (``nnx.eval_shape``) as zeros on the device; others as they are."""
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        return self._put(blank_leaf(leaf, self.dtype, self.seed))

    def describe(self) -> str:
        return f"jax {jax.__version__} on {self.device.platform}:{self.device.id} ({self.device.device_kind})"

    def agree(self, flag: bool) -> bool:
        return flag

    def _put(self, x):
        return jax.device_put(x, self.device)

    @property
    def graphdef(self):
        return self.graphdefs[self.training]

    def _input(self, x):
        """Inputs on the device; floating ``[N, C, *spatial]`` inputs channels-last where the port is."""
        move = self.layout.channels_last
        return self._put(
            batch.tree_map(lambda a: channel_last(a) if move and batch.is_float(a) and a.ndim >= 3 else a, x)
        )

    def _masks(self, masks):
        if not masks:
            return None
        to = self._mask_paths
        move = self.layout.channels_last
        return {
            to.get(k, k): self._put(channel_last(m) if move and m.ndim >= 3 else m) for k, m in masks.items()
        }

    # ------------------------------------------------------------------ state

    @_in_mode
    def state_dict(self) -> dict[str, np.ndarray]:
        out = jmodel.to_torch_layout(_host(self.params), self.layout)
        out |= jmodel.to_torch_layout(_host(self.stats), self.layout)
        return out | {k: np.asarray(n, np.int64) for k, n in self.tracked.items()}

    @_in_mode
    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        checkpoint.validate_state_dict(state, self.config, self.dtype)
        self.params = self._put(jmodel.from_torch_layout(self.params, state, self.layout))
        if jax.tree.leaves(self.stats):
            self.stats = self._put(jmodel.from_torch_layout(self.stats, state, self.layout))
        self.tracked = {k: int(state[k]) for k in self.tracked}

    def _torch_stats(self, stats) -> dict[str, np.ndarray]:
        out = jmodel.to_torch_layout(_host(stats), self.layout) if jax.tree.leaves(stats) else {}
        return out | {k: np.asarray(n + 1, np.int64) for k, n in self.tracked.items()}

    # ------------------------------------------------------------------ queries

    def _acts_to_torch(self, acts: dict) -> dict[str, np.ndarray]:
        kinds = self.layout.kinds
        out = {}
        for name, value in _host(acts).items():
            torch_name = self.layout.torch_module(name.split("."))
            base = torch_name.split("#")[0]
            feature_map = value.ndim >= 4 or (
                value.ndim == 3 and kinds.get(base) in ("conv", "conv_transpose", "batchnorm")
            )
            if self.layout.channels_last and feature_map and np.issubdtype(value.dtype, np.floating):
                value = channel_first(value)
            out[torch_name] = value
        return out

    @_in_mode
    def activations(self, x, masks=None) -> dict[str, np.ndarray]:
        return self._acts_to_torch(
            _activations(
                self.graphdef, self.params, self.stats, self.rest, self._input(x), self._masks(masks)
            )
        )

    @_in_mode
    def buffers_after(self, x) -> dict[str, np.ndarray]:
        _, stats = _forward(self.graphdefs[True], self.params, self.stats, self.rest, self._input(x), None)
        return self._torch_stats(stats)

    @_in_mode
    def loss_and_grads(self, x, y, masks=None) -> tuple[float, dict[str, np.ndarray]]:
        loss = (self.config.loss, self.config.ignore_index)
        (value, _), grads = _GRADS(
            self.params,
            self.graphdef,
            self.stats,
            self.rest,
            self._input(x),
            self._put(y),
            self._masks(masks),
            loss,
        )
        return float(value), jmodel.to_torch_layout(_host(grads), self.layout)

    # ------------------------------------------------------------------ optimizer and steps

    @_in_mode
    def set_optimizer(self, cfg: OptimConfig, state=None, step: int = 0) -> None:
        loss = (self.config.loss, self.config.ignore_index)
        self.tx, self._step, self._apply = _optimizer(self.graphdef, cfg, self.dtype, loss, self.layout)
        self._step_cfg = (cfg, loss)
        self.load_optimizer_state(state, step)

    @_in_mode
    def load_optimizer_state(self, state, step: int) -> None:
        assert self.tx is not None, "set_optimizer first"
        fresh = _INIT(self.tx, self.params)
        self.opt_state = self._put(jtrain.import_opt_state(fresh, state or {}, step, self.layout))
        self.step = step

    @_in_mode
    def optimizer_state(self) -> dict[str, np.ndarray]:
        return jtrain.export_opt_state(_host(self.opt_state), self.step, self.layout)

    @_in_mode
    def apply_gradients(self, grads: dict[str, np.ndarray]) -> None:
        tree = self._put(jmodel.from_torch_layout(self.params, grads, self.layout))
        self.params, self.opt_state = self._apply(self.params, self.opt_state, tree)
        self.step += 1

    @_in_mode
    def train_steps(self, batches: list[np.ndarray]) -> np.ndarray:
        assert self.tx is not None and self._data is not None, "set_optimizer and set_train_data first"
        cfg, loss = self._step_cfg
        step = _optimizer(self.graphdef, cfg, self.dtype, loss, self.layout)[1]  # this mode's graphdef
        losses = []
        for idx in batches:
            x, y = self._batch(idx)
            x, y = self._input(x), self._put(y)
            key = jax.random.fold_in(jax.random.key(self.seed), self.step) if self.train_dropout else None
            self.params, stats, self.opt_state, value = step(
                self.params, self.stats, self.rest, self.opt_state, x, y, key
            )
            if self.training:
                self.stats = stats
                self.tracked = {k: n + 1 for k, n in self.tracked.items()}
            losses.append(value)
            self.step += 1
        return np.array([float(v) for v in losses])  # one wait at the end, not one per step

    @_in_mode
    def evaluate(self, images, labels, batch_size: int = 64) -> tuple[int, float]:
        """``(correct, mean loss)`` in eval mode: correct counts the targets whose argmax is
        right; the loss is the mean over all targets (nats per example, or per character)."""
        loss = (self.config.loss, self.config.ignore_index)
        total, correct, count = 0.0, 0, 0
        n = batch.size(images)
        for lo in range(0, n, batch_size):
            idx = np.arange(lo, min(n, lo + batch_size))
            x, y = self._input(batch.take(images, idx)), self._put(batch.take(labels, idx))
            parts = _evaluate(self.graphdefs[False], self.params, self.stats, self.rest, x, y, loss)
            total, correct, count = total + parts[0], correct + parts[1], count + parts[2]
        return int(correct), float(total) / max(int(count), 1)

    @_in_mode
    def predict(self, images) -> np.ndarray:
        out, _ = _forward(
            self.graphdefs[False], self.params, self.stats, self.rest, self._input(images), None
        )
        return np.asarray(main_output(out))


def _check_classes(layout, classes: dict[str, type]) -> None:
    """Each torch module with a built-in rule meets an NNX module of the matching class.

    Raises:
        JaxnetError: naming the torch module, its kind, and the NNX class found there.
    """
    torch_paths = {layout.torch_module(p.split(".")) if p else "": cls for p, cls in classes.items()}
    for path, kind in layout.kinds.items():
        if kind not in NNX_CLASSES or path not in layout.rules or path not in torch_paths:
            continue
        cls = torch_paths[path]
        names = {c.__name__ for c in cls.__mro__}
        if not names & set(NNX_CLASSES[kind]):
            raise JaxnetError(
                f"torch module {path!r} is a {kind} but the nnx module there is {cls.__name__} "
                f"(expected nnx.{' or nnx.'.join(NNX_CLASSES[kind])}): map it to its counterpart"
            )


def blank_leaf(leaf: jax.ShapeDtypeStruct, dtype: str | None = None, seed: int = 0):
    """A concrete stand-in for an abstract leaf (``nnx.eval_shape``): host zeros (floating ones
    in ``dtype``, where given), or keys from ``key(seed)`` for a dropout's stream. For the
    leaves torch's weights and buffers replace (or an RNG stream's): building a port abstractly
    skips its initialisers, each one compiled program per parameter shape on a CPU (1-2 s
    apiece for e12's CNN under XLA's default optimisations)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        key = jax.random.key(seed)
        return key if leaf.shape == () else jax.random.split(key, leaf.shape)
    floating = dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating)
    return np.zeros(leaf.shape, dtype if floating else leaf.dtype)


def _check_abstract(model: nnx.Module) -> None:
    """An abstract port's state beyond its parameters, batch statistics and RNG streams (a
    constant ``nnx.Variable``, a mask, a table) has no torch counterpart to load: zeros would
    stand in for it for good.

    Raises:
        JaxnetError: naming those leaves.
    """
    others = nnx.state(model, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat, nnx.RngState)))
    abstract = [k for k, v in _dotted(others).items() if isinstance(v, jax.ShapeDtypeStruct)]
    if abstract:
        raise JaxnetError(
            f"the port was built abstractly (nnx.eval_shape) but holds state that is neither a parameter "
            f"nor a batch statistic, which torch's weights do not replace: {', '.join(abstract)}; build it concretely"
        )


def _run_in(module: nnx.Module, dtype: str) -> None:
    """The module computes in ``dtype``: a float ``dtype``/``param_dtype`` attribute set when it
    was built (``nnx.Embed`` freezes ``dtype`` to its parameters' float32) follows the row's."""
    for attr in ("dtype", "param_dtype"):
        value = getattr(module, attr, None)
        if value is not None and jnp.issubdtype(jnp.dtype(value), jnp.floating):
            object.__setattr__(module, attr, jnp.dtype(dtype))
