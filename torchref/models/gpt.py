"""A nanoGPT-style character model on ``nn.MultiheadAttention`` (Karpathy's nanoGPT design).

``ids [B, T] -> wte(ids) + wpe(0..T-1) -> drop -> n_layer x Block -> ln_f -> lm_head``,
logits ``[B, T, vocab_size]``, where each pre-LayerNorm ``Block`` is::

    x = x + resid_dropout(attn(ln_1(x)))      causal self-attention, n_head heads
    x = x + mlp(ln_2(x))                      c_fc (4 n_embd) -> exact GELU -> c_proj -> dropout

``lm_head`` has no bias and shares its weight with ``wte`` (nanoGPT's weight tying:
``self.wte.weight = self.lm_head.weight``), so ``state_dict()`` holds the one tensor under
both ``wte.weight`` and ``lm_head.weight``.

Attention is torch's ``nn.MultiheadAttention(batch_first=True)``: its q/k/v projections are
one packed ``in_proj_weight [3E, E]`` and ``in_proj_bias [3E]``, its output ``out_proj``. The
causal mask is a boolean buffer (``True`` = blocked, torch's polarity), registered as
non-persistent: it is derived from ``block_size``, so it stays out of the state dict. The
attention's own dropout (on the attention weights, inside ``nn.MultiheadAttention``, where
no hook or shared mask can reach it) is 0; dropout sits on the embeddings, after each
attention and in each MLP, as ``nn.Dropout`` modules.

State-dict keys: ``wte.weight [V, E]``, ``wpe.weight [block_size, E]``,
``h.{i}.ln_1.{weight,bias}``, ``h.{i}.attn.in_proj_weight [3E, E]``,
``h.{i}.attn.in_proj_bias [3E]``, ``h.{i}.attn.out_proj.{weight [E, E], bias}``,
``h.{i}.ln_2.*``, ``h.{i}.mlp.c_fc.{weight [4E, E], bias}``,
``h.{i}.mlp.c_proj.{weight [E, 4E], bias}``, ``ln_f.*``, ``lm_head.weight`` (= ``wte.weight``).

Example:
    >>> model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32))
    >>> model(torch.zeros(3, 16, dtype=torch.long)).shape
    torch.Size([3, 16, 65])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """nanoGPT's configuration (its names); ``dropout`` is the rate of every ``nn.Dropout``."""

    vocab_size: int = 96
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1


class MLP(nn.Module):
    """``c_fc -> GELU (exact, erf) -> c_proj -> dropout``, 4x wide."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: causal self-attention and an MLP, each residual."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = nn.MultiheadAttention(config.n_embd, config.n_head, dropout=0.0, batch_first=True)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.ln_1(x)
        a, _ = self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)
        x = x + self.resid_dropout(a)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """The character model: ``forward(ids, padding_mask=None) -> logits [B, T, vocab_size]``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying (nanoGPT, after Press & Wolf 2017)
        # True above the diagonal: position t may not attend to any later position.
        causal = torch.triu(torch.ones(config.block_size, config.block_size, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)
        # nanoGPT's initialisation: N(0, 0.02) for Linear and Embedding weights, zero biases,
        # and N(0, 0.02 / sqrt(2 n_layer)) for the projections into the residual stream. The
        # packed in_proj_weight is a bare Parameter, so it keeps MultiheadAttention's own
        # xavier_uniform (and zero in_proj_bias), as it does in anyone's model built this way.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "out_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids [B, T]`` int64 -> logits ``[B, T, vocab_size]``.

        ``padding_mask [B, T]`` bool, ``True`` at padding: no position attends to those keys
        (``nn.MultiheadAttention``'s ``key_padding_mask``). A position whose every allowed key
        is padding (left padding's first positions) has no defined attention: torch 2.13's
        attention then outputs zeros where autograd is on, and NaN on its no-grad fast path.
        """
        _, t = ids.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} tokens, the model's block_size is {self.config.block_size}")
        pos = torch.arange(t, device=ids.device)
        x = self.drop(self.wte(ids) + self.wpe(pos))
        mask = self.causal_mask[:t, :t]
        for block in self.h:
            x = block(x, mask, padding_mask)
        return self.lm_head(self.ln_f(x))


def param_groups(model: GPT, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on the Linear and attention projection weights,
    none on LayerNorm, biases and the embeddings (the tied ``wte``/``lm_head`` weight is one
    parameter, an embedding: ``named_parameters()`` lists it once, as ``wte.weight``).

    Example:
        >>> opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.99))
    """
    embeddings = {id(model.wte.weight), id(model.wpe.weight)}
    decay = [p for p in model.parameters() if p.ndim > 1 and id(p) not in embeddings]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 or id(p) in embeddings]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def from_config(fields: dict, dtype: torch.dtype | None = None) -> GPT:
    """A fresh GPT of ``GPTConfig``'s fields, from torch's global RNG (jaxnet's registry calls it)."""
    model = GPT(GPTConfig(**fields))
    return model if dtype is None else model.to(dtype)
