"""A nanoGPT-style character model in Flax NNX, and its hand-written weight mapping from torch.

The NNX port of ``torchref/models/gpt.py``, on ``nnx.MultiHeadAttention``::

    ids [B, T] -> wte(ids) + wpe(0..T-1) -> drop -> h[0..n_layer-1] -> ln_f -> wte.attend
    Block: x = x + resid_dropout(attn(ln_1(x), mask)); x = x + mlp(ln_2(x))
    MLP:   c_fc (4E) -> gelu (exact) -> c_proj -> dropout

Where the two libraries' defaults differ, the port says so explicitly:

- ``nnx.LayerNorm(epsilon=1e-5)`` (Flax's default is 1e-6, torch's 1e-5);
- ``jax.nn.gelu(approximate=False)``: ``nn.GELU()`` is the exact, erf-based GELU, JAX's
  default the tanh approximation (jax#4428);
- masks: Flax's boolean attention mask is ``True`` where a query *may* attend, torch's
  ``attn_mask``/``key_padding_mask`` are ``True`` where it may *not*. The port takes the
  same ``padding_mask`` as torch (``True`` at padding) and builds Flax's mask as
  ``causal & ~padding`` (``[B, 1, T, T]``);
- the head is tied: ``self.wte.attend(x)`` is ``x @ wte.embedding.T``; there is no
  ``lm_head`` parameter (torch's state dict holds the tied tensor twice);
- ``decode=False``: no key/value cache, the whole sequence in one call;
- ``attention_fn=attention``: ``nnx.MultiHeadAttention``'s default, without attention
  dropout, is ``jax.nn.dot_product_attention``, whose XLA implementation always computes
  the softmax in float32 ("always carried out in fp32", jax 0.10): a float64 model's output
  then differs from torch's by ~1e-9 instead of ~1e-16. :func:`attention` is Flax's own
  weights-then-values formula (``nnx.dot_product_attention_weights``), softmax in the
  inputs' dtype; in float32 the two agree to rounding.

Dropout is ``nnx.Dropout`` with its own RNG stream (``rngs``): ``model.train()`` turns it on,
``model.eval()`` off, as torch's ``train()``/``eval()`` do; the two frameworks draw different
masks. The attention weights have no dropout (``dropout_rate=0``, as on the torch side).

Weight mapping (:func:`from_torch_state`, numpy only; E = n_embd, H = n_head, D = E / H)::

    torch state-dict key                   NNX state path
    wte.weight [V, E], wpe.weight          wte.embedding, wpe.embedding        as is
    lm_head.weight [V, E]                  - (tied: must equal wte.weight)
    h.i.ln_1.weight / .bias                h.i.ln_1.scale / .bias
    h.i.attn.in_proj_weight [3E, E]        rows [0:E] -> h.i.attn.query.kernel = W_q.T as [E, H, D]
                                           rows [E:2E] -> key.kernel, [2E:3E] -> value.kernel
    h.i.attn.in_proj_bias [3E]             query/key/value.bias as [H, D]
    h.i.attn.out_proj.weight [E, E]        h.i.attn.out.kernel = W_o.T as [H, D, E]
    h.i.attn.out_proj.bias [E]             h.i.attn.out.bias
    h.i.mlp.c_fc/c_proj.weight [out, in]   h.i.mlp.c_fc/c_proj.kernel [in, out]   (transposed)
    ln_f.weight / .bias                    ln_f.scale / .bias

Heads split the projection's outputs in order: torch's head ``j`` is rows ``j*D:(j+1)*D`` of
``W_q``, which is ``kernel[:, j, :]`` after the reshape.

Example:
    >>> model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32), rngs=nnx.Rngs(0))
    >>> model.eval()
    >>> model(jnp.zeros((3, 16), jnp.int32)).shape
    (3, 16, 65)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

from jaxnet.errors import CheckpointError, JaxnetError
from jaxnet.families import GPTConfig  # nanoGPT's sizes, declared once for both backends and the CLI
from jaxnet.models.state import load_nested


def _normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=std)


def _uniform(bound: float) -> nnx.Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None = None,
    *,
    dtype: jnp.dtype | None = None,
    precision: jax.lax.PrecisionLike = None,
    **unused,
) -> jax.Array:
    """``softmax(q k^T / sqrt(D), masked) v`` per head, the softmax in the inputs' dtype.

    ``[B, T, H, D]`` in and out; ``mask`` ``True`` = may attend. A drop-in ``attention_fn``
    for ``nnx.MultiHeadAttention`` (the attention-dropout arguments it passes are unused:
    this model has none).
    """
    weights = dot_product_attention_weights(query, key, mask=mask, dtype=dtype, precision=precision)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


class MLP(nnx.Module):
    """``c_fc -> GELU (exact) -> c_proj -> dropout``, 4x wide."""

    def __init__(self, config: GPTConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        e = config.n_embd
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)  # nanoGPT: residual projections scaled down
        self.c_fc = nnx.Linear(e, 4 * e, kernel_init=_normal(0.02), param_dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(4 * e, e, kernel_init=_normal(proj_std), param_dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=False)))


class Block(nnx.Module):
    """Pre-LayerNorm block: ``x + resid_dropout(attn(ln_1(x)))``, then ``+ mlp(ln_2(x))``."""

    def __init__(self, config: GPTConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> None:
        e = config.n_embd
        self.ln_1 = nnx.LayerNorm(e, epsilon=1e-5, param_dtype=dtype, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=config.n_head,
            in_features=e,
            qkv_features=e,
            out_features=e,
            decode=False,
            dropout_rate=0.0,
            attention_fn=attention,  # softmax in the model's dtype (see the module docstring)
            # torch's xavier_uniform_ on the packed [3E, E] in_proj_weight: U(+-sqrt(6 / (E + 3E)))
            kernel_init=_uniform(math.sqrt(6.0 / (4 * e))),
            out_kernel_init=_normal(0.02 / math.sqrt(2 * config.n_layer)),
            param_dtype=dtype,
            rngs=rngs,
        )
        self.resid_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(e, epsilon=1e-5, param_dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.resid_dropout(self.attn(self.ln_1(x), mask=mask))
        return x + self.mlp(self.ln_2(x))


class GPT(nnx.Module):
    """The character model: ``model(ids, padding_mask=None) -> logits [B, T, vocab_size]``."""

    def __init__(self, config: GPTConfig, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs) -> None:
        if config.n_embd % config.n_head:
            raise JaxnetError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.config = config
        e = config.n_embd
        self.wte = nnx.Embed(config.vocab_size, e, embedding_init=_normal(0.02), param_dtype=dtype, rngs=rngs)
        self.wpe = nnx.Embed(config.block_size, e, embedding_init=_normal(0.02), param_dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(config.dropout, rngs=rngs)
        self.h = nnx.List([Block(config, dtype=dtype, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = nnx.LayerNorm(e, epsilon=1e-5, param_dtype=dtype, rngs=rngs)

    def __call__(self, ids: jax.Array, padding_mask: jax.Array | None = None) -> jax.Array:
        """``ids [B, T]`` integers -> logits ``[B, T, vocab_size]``.

        ``padding_mask [B, T]`` bool, ``True`` at padding (torch's ``key_padding_mask``
        polarity): no position attends to those keys. A position whose every allowed key is
        padding has no defined attention: Flax then averages all values uniformly (its
        masked scores are the dtype's lowest value, not -inf), torch 2.13 gives zeros with
        autograd on and NaN on its no-grad fast path. Pad on the right to stay defined.
        """
        t = ids.shape[1]
        if t > self.config.block_size:
            raise JaxnetError(f"sequence of {t} tokens, the model's block_size is {self.config.block_size}")
        mask = causal_mask(t, padding_mask)
        x = self.drop(self.wte(ids) + self.wpe(jnp.arange(t)))
        for block in self.h:
            x = block(x, mask)
        return self.wte.attend(self.ln_f(x))  # the tied head: x @ wte.embedding.T


def causal_mask(t: int, padding_mask: jax.Array | None = None) -> jax.Array:
    """Flax's attention mask ``[B or 1, 1, T, T]``, ``True`` = may attend: ``key <= query``, and
    not a padding key (``padding_mask`` is ``True`` at padding, as torch's ``key_padding_mask``)."""
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    if padding_mask is not None:
        mask = mask & ~jnp.asarray(padding_mask, bool)[:, None, None, :]
    return mask


# ------------------------------------------------------------------ the weight mapping


def from_torch_state(state: dict[str, np.ndarray], n_head: int) -> dict:
    """torch's ``GPT.state_dict()`` (as numpy arrays) -> the NNX model's state, as a nested dict.

    ``nnx.update(model, from_torch_state(sd, n_head))`` loads it. ``n_head`` is needed to
    split the packed projections into heads (the state dict does not record it).

    Raises:
        CheckpointError: a missing or unexpected key, ``n_embd`` not divisible by ``n_head``,
            or an ``lm_head.weight`` that differs from ``wte.weight`` (the port ties them).
    """
    state = {k: np.asarray(v) for k, v in state.items()}
    try:
        wte = state["wte.weight"]
        e = wte.shape[1]
        if e % n_head:
            raise CheckpointError(f"GPT state dict: n_embd {e} is not a multiple of n_head {n_head}")
        d = e // n_head
        head = state.get("lm_head.weight", wte)
        if head.shape != wte.shape or not np.array_equal(head, wte):
            raise CheckpointError(
                "GPT state dict: lm_head.weight differs from wte.weight, the port ties them"
            )

        def ln(p: str) -> dict:
            return {"scale": state[f"{p}.weight"], "bias": state[f"{p}.bias"]}

        def linear(p: str) -> dict:
            return {"kernel": state[f"{p}.weight"].T, "bias": state[f"{p}.bias"]}

        n_layer = len({k.split(".")[1] for k in state if k.startswith("h.")})
        blocks = {}
        for i in range(n_layer):
            p = f"h.{i}"
            w = state[f"{p}.attn.in_proj_weight"]  # [3E, E]: W_q, W_k, W_v stacked by rows
            b = state[f"{p}.attn.in_proj_bias"]
            attn = {
                name: {"kernel": w[j * e : (j + 1) * e].T.reshape(e, n_head, d), "bias": b[j * e : (j + 1) * e].reshape(n_head, d)}
                for j, name in enumerate(("query", "key", "value"))
            }  # fmt: skip
            attn["out"] = {
                "kernel": state[f"{p}.attn.out_proj.weight"].T.reshape(n_head, d, e),
                "bias": state[f"{p}.attn.out_proj.bias"],
            }
            blocks[i] = {
                "ln_1": ln(f"{p}.ln_1"),
                "attn": attn,
                "ln_2": ln(f"{p}.ln_2"),
                "mlp": {"c_fc": linear(f"{p}.mlp.c_fc"), "c_proj": linear(f"{p}.mlp.c_proj")},
            }
        out = {
            "wte": {"embedding": wte},
            "wpe": {"embedding": state["wpe.weight"]},
            "h": blocks,
            "ln_f": ln("ln_f"),
        }
    except KeyError as err:
        raise CheckpointError(f"GPT state dict: missing key {err.args[0]!r}") from None
    extra = sorted(set(state) - set(to_torch_state(out)))
    if extra:
        raise CheckpointError(f"GPT state dict: unexpected keys {', '.join(extra[:5])}")
    return out


def to_torch_state(tree: dict) -> dict[str, np.ndarray]:
    """The inverse: the NNX state (``nnx.to_pure_dict(nnx.state(model))``) -> torch's keys, as numpy.

    The tied head appears twice, as in torch's ``state_dict()``: ``wte.weight`` and
    ``lm_head.weight`` (equal arrays).
    """
    a = lambda v: np.asarray(v)  # noqa: E731
    wte = a(tree["wte"]["embedding"])
    out = {"wte.weight": wte, "wpe.weight": a(tree["wpe"]["embedding"])}
    for i, block in sorted(tree["h"].items(), key=lambda kv: int(kv[0])):
        p = f"h.{i}"
        attn = block["attn"]
        e = wte.shape[1]
        out[f"{p}.ln_1.weight"], out[f"{p}.ln_1.bias"] = a(block["ln_1"]["scale"]), a(block["ln_1"]["bias"])
        out[f"{p}.attn.in_proj_weight"] = np.concatenate(
            [a(attn[n]["kernel"]).reshape(e, e).T for n in ("query", "key", "value")]
        )
        out[f"{p}.attn.in_proj_bias"] = np.concatenate(
            [a(attn[n]["bias"]).reshape(e) for n in ("query", "key", "value")]
        )
        out[f"{p}.attn.out_proj.weight"] = a(attn["out"]["kernel"]).reshape(e, e).T
        out[f"{p}.attn.out_proj.bias"] = a(attn["out"]["bias"])
        out[f"{p}.ln_2.weight"], out[f"{p}.ln_2.bias"] = a(block["ln_2"]["scale"]), a(block["ln_2"]["bias"])
        for name in ("c_fc", "c_proj"):
            out[f"{p}.mlp.{name}.weight"] = a(block["mlp"][name]["kernel"]).T
            out[f"{p}.mlp.{name}.bias"] = a(block["mlp"][name]["bias"])
    out["ln_f.weight"], out["ln_f.bias"] = a(tree["ln_f"]["scale"]), a(tree["ln_f"]["bias"])
    out["lm_head.weight"] = wte
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_torch_state(model: GPT, state: dict[str, np.ndarray]) -> GPT:
    """Load torch's state dict into ``model`` in place (keys and shapes checked) and return it.

    ``model`` may be abstract (``nnx.eval_shape(lambda: GPT(...))``): every parameter is
    replaced, in the dtype of ``state`` (its dropouts' RNG streams stay abstract, so such a
    model runs in eval mode only, until given ``rngs``).
    """
    return load_nested(model, from_torch_state(state, model.config.n_head), "GPT")


def decay_mask(params) -> object:
    """Where weight decay applies, as a pytree of bools shaped like ``params`` (an ``nnx.State``
    of parameters, or its pure dict): the Linear and attention kernels; not LayerNorm, biases or the embeddings (the tied head is ``wte``). For ``optax.add_decayed_weights(wd, mask=...)``
    or ``optax.adamw(..., mask=...)``; the same tensors as ``torchref.models.gpt.param_groups``.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf(path) == "kernel", params)


def _leaf(path) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return [n for n in names if n != "value"][-1]


def from_config(fields: dict, *, seed: int = 0, dtype: str = "float32") -> GPT:
    """The registry's builder: a fresh GPT of ``GPTConfig`` fields (nanoGPT's distributions,
    JAX's RNG stream)."""
    return GPT(GPTConfig(**fields), dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed))
