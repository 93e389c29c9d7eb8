"""Porting a GPT: the causal mask's polarity, the tied head, 1/sqrt(head_dim), exact GELU.

A nanoGPT-style character model (the project's `--model gpt`, here with one block and tiny
widths): token and position embeddings, a pre-LayerNorm block (causal self-attention, then a
4x wide GELU MLP, each added to the residual), a final LayerNorm, and a head that shares its
weight with the token embedding. The torch side is built on `nn.MultiheadAttention`, the port
on `nnx.MultiHeadAttention`; four places differ with no error to tell:

- **the mask's polarity**: a boolean `attn_mask` of `nn.MultiheadAttention` is `True` where a
  query may *not* attend (above the diagonal: later positions); Flax's mask is `True` where it
  *may* (on and below it). torch's mask handed to Flax lets every position read the future.
- **the tied head**: `lm_head.weight = wte.weight` makes one parameter with two names in
  torch's `state_dict()`; in NNX the head is `wte.attend(x)` (`x @ embedding.T`), with no
  parameter of its own. Its gradient is the sum of the embedding's and the head's.
- **1/sqrt(head_dim)**: attention logits are scaled by `1/sqrt(n_embd / n_head)`, not
  `1/sqrt(n_embd)`. The port's `attention` writes the formula out (the default `attention_fn`
  does the same, but takes the softmax in float32 even for float64 inputs).
- **GELU**: `nn.GELU()` is the exact, erf-based one; `jax.nn.gelu`'s default is the tanh
  approximation (torch's `nn.GELU(approximate="tanh")`). And LayerNorm's eps: torch's 1e-5,
  Flax's default 1e-6.

The mapping splits torch's packed `in_proj_weight [3E, E]` into the query, key and value
kernels `[E, H, D]` (head `h` is rows `h*D:(h+1)*D`). The data: 16-character windows of the
fortunes corpus, and the next character of each as the target.
"""

from jaxnet import process

process.prepare(shared=True)  # before torch loads: OpenMP threads sleep between torch and XLA calls

# %% torch
import torch
from torch import nn


class Block(nn.Module):  # pre-LayerNorm: x + attn(ln_1(x)), then x + mlp(ln_2(x))
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)  # eps=1e-5
        self.attn = nn.MultiheadAttention(n_embd, n_head, batch_first=True)  # scales by 1/sqrt(D)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()  # exact (erf)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size=16, n_embd=16, n_head=2):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied: one parameter, two state_dict keys
        mask = torch.triu(torch.ones(block_size, block_size, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)  # True = may NOT attend

    def forward(self, ids):  # ids: int64 [B, T]
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x, self.mask[:t, :t])
        return self.lm_head(self.ln_f(x))  # logits [B, T, vocab_size]


def torch_side(ids, targets, state, steps, dtype=torch.float32):  # ids, targets: [steps * 8, T]
    model = GPT(state["wte.weight"].shape[0]).to(dtype)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    # decay on the Linear and attention weights; not LayerNorm, biases, embeddings (tied head)
    named = list(model.named_parameters())  # the tied weight once, as wte.weight
    decay = {n for n, p in named if p.ndim > 1 and not n.startswith(("wte", "wpe"))}
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": 0.1},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]  # fmt: skip
    opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95))
    x, y = torch.from_numpy(ids), torch.from_numpy(targets)
    losses = []
    for i in range(steps):
        logits = model(x[8 * i : 8 * i + 8])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y[8 * i : 8 * i + 8].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


# %% jax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


def attention(q, k, v, mask=None, **unused):  # [B, T, H, D]: nn.MultiheadAttention's formula
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5  # 1/sqrt(head_dim)
    scores = jnp.where(mask, scores, -jnp.inf)  # Flax's polarity: True = MAY attend
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


class FlaxBlock(nnx.Module):
    def __init__(self, n_embd, n_head, *, dtype, rngs):
        kw = dict(param_dtype=dtype, rngs=rngs)
        self.ln_1 = nnx.LayerNorm(n_embd, epsilon=1e-5, **kw)  # Flax's default eps: 1e-6
        self.attn = nnx.MultiHeadAttention(n_head, n_embd, decode=False, attention_fn=attention, **kw)
        self.ln_2 = nnx.LayerNorm(n_embd, epsilon=1e-5, **kw)
        self.c_fc = nnx.Linear(n_embd, 4 * n_embd, **kw)
        self.c_proj = nnx.Linear(4 * n_embd, n_embd, **kw)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask=mask)
        return x + self.c_proj(jax.nn.gelu(self.c_fc(self.ln_2(x)), approximate=False))  # exact


class FlaxGPT(nnx.Module):
    def __init__(self, vocab_size, block_size=16, n_embd=16, n_head=2, *, dtype=jnp.float32, rngs):
        self.wte = nnx.Embed(vocab_size, n_embd, param_dtype=dtype, rngs=rngs)
        self.wpe = nnx.Embed(block_size, n_embd, param_dtype=dtype, rngs=rngs)
        self.h = nnx.List([FlaxBlock(n_embd, n_head, dtype=dtype, rngs=rngs)])
        self.ln_f = nnx.LayerNorm(n_embd, epsilon=1e-5, param_dtype=dtype, rngs=rngs)

    def __call__(self, ids):  # ids: int [B, T]
        t = ids.shape[1]
        mask = jnp.tril(jnp.ones((t, t), dtype=bool))  # True = may attend: not torch's mask
        x = self.wte(ids) + self.wpe(jnp.arange(t))
        for block in self.h:
            x = block(x, mask)
        return self.wte.attend(self.ln_f(x))  # the tied head: x @ wte.embedding.T


def load_torch_state(model, state, n_head=2):  # a torch state_dict (as numpy) into the port
    e = state["wte.weight"].shape[1]
    d = e // n_head
    model.wte.embedding[...] = state["wte.weight"]  # lm_head.weight is the same array
    model.wpe.embedding[...] = state["wpe.weight"]
    for i, block in enumerate(model.h):
        p = f"h.{i}."
        w, b = state[p + "attn.in_proj_weight"], state[p + "attn.in_proj_bias"]  # [3E, E]: q, k, v
        for j, proj in enumerate((block.attn.query, block.attn.key, block.attn.value)):
            proj.kernel[...] = w[j * e : (j + 1) * e].T.reshape(e, n_head, d)  # [E, H, D]
            proj.bias[...] = b[j * e : (j + 1) * e].reshape(n_head, d)
        block.attn.out.kernel[...] = state[p + "attn.out_proj.weight"].T.reshape(n_head, d, e)
        block.attn.out.bias[...] = state[p + "attn.out_proj.bias"]
        for name in ("ln_1", "ln_2", "c_fc", "c_proj"):
            module, weight = getattr(block, name), state[p + name + ".weight"]
            if name.startswith("ln"):
                module.scale[...] = weight
            else:
                module.kernel[...] = weight.T  # [out, in] -> [in, out]
            module.bias[...] = state[p + name + ".bias"]
    model.ln_f.scale[...], model.ln_f.bias[...] = state["ln_f.weight"], state["ln_f.bias"]


def jax_side(ids, targets, state, steps, dtype=jnp.float32):
    model = FlaxGPT(state["wte.weight"].shape[0], dtype=dtype, rngs=nnx.Rngs(0))
    load_torch_state(model, state)

    def decay(params):  # the kernels: an attention bias is [H, D], so `ndim > 1` would not do
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "kernel" in jax.tree_util.keystr(path), params
        )

    tx = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.1, mask=decay)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer, ids[8 * i : 8 * i + 8], targets[8 * i : 8 * i + 8]))
              for i in range(steps)]  # fmt: skip
    return model, losses


# %% check
def main():
    import numpy as np

    from examples._common import show, show_compare
    from jaxnet import parity, text

    steps = 3
    corpus = text.load()  # the fortunes; windows of 16 characters and their next characters
    x, y = corpus.batches("train", 16, 8 * steps, seed=0, step=0)
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in GPT(corpus.vocab_size).double().state_dict().items()}
    torch_model, torch_losses = torch_side(x, y, state, steps, torch.float64)
    with jax.enable_x64(True):  # float64 JAX here only
        port, jax_losses = jax_side(x, y, state, steps, jnp.float64)
        forward = nnx.jit(lambda module, *args: module(*args))  # one compilation, not one per operation
        jax_logits = np.asarray(forward(port, x[:8]))
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(x[:8])).numpy()
    print(f"{corpus.vocab_size} characters; ln(vocab) = {np.log(corpus.vocab_size):.8f}")
    for step in range(steps):
        print(f"loss at step {step + 1}: torch {torch_losses[step]:.8f}  jax {jax_losses[step]:.8f}")
    show("logits after the steps, window 0, position 15", torch_logits[0, 15], jax_logits[0, 15])
    # float64: sums of <= 64 products and a softmax over <= 16 keys, ~1e-16 relative each,
    # through 3 Adam steps: far below 1e-12 (a wrong scale, mask, GELU or eps moves them > 1e-6)
    assert np.allclose(torch_losses, jax_losses, rtol=1e-12, atol=0)
    assert np.abs(jax_logits - torch_logits).max() <= 1e-12 * np.abs(torch_logits).max()

    # The tied head: one tensor under two names in torch, no head parameter in the port
    sd = torch_model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["wte.weight"].data_ptr()
    torch_count = sum(p.numel() for p in torch_model.parameters())  # the tied weight once
    jax_count = sum(p.size for p in jax.tree.leaves(nnx.state(port, nnx.Param)))
    print(
        f"parameters: torch {torch_count} (state_dict: {sum(v.numel() for v in sd.values())}), jax {jax_count}"
    )
    assert torch_count == jax_count

    # The mask's polarity: position 0's logits must not move when a later character changes
    @nnx.jit
    def port_logits(port, ids, mask):  # the port's forward with a given Flax mask
        h = port.wte(ids) + port.wpe(jnp.arange(ids.shape[1]))
        return port.wte.attend(port.ln_f(port.h[0](h, mask)))[:, 0]

    changed = x[:8].copy()
    changed[:, 5:] = (changed[:, 5:] + 1) % corpus.vocab_size
    with torch.no_grad():
        before, after = (torch_model(torch.from_numpy(ids))[:, 0].numpy() for ids in (x[:8], changed))
    moved = {"torch": np.abs(after - before).max()}
    torch_mask = torch_model.mask[:16, :16].numpy()  # True above the diagonal
    with jax.enable_x64(True):
        for name, mask in [("jax, Flax's mask", ~torch_mask), ("jax, torch's mask as is", torch_mask)]:
            moved[name] = np.abs(port_logits(port, changed, mask) - port_logits(port, x[:8], mask)).max()
    print("position 0's logits, when characters 5-15 change, move by:")
    for name, by in moved.items():
        print(f"  {name:24s} {by:.2g}")
    assert moved["torch"] == moved["jax, Flax's mask"] == 0 and moved["jax, torch's mask as is"] > 1e-3

    # 1/sqrt(head_dim): torch's attention weights against the formula, from the port's q and k
    block, tblock = port.h[0], torch_model.h[0]
    h = torch_model.wte(torch.from_numpy(x[:8])) + torch_model.wpe(torch.arange(16))
    with torch.no_grad():
        hn = tblock.ln_1(h)
        weights = tblock.attn(hn, hn, hn, attn_mask=torch_model.mask, average_attn_weights=False)[1].numpy()

    @nnx.jit
    def scores(block, h):  # the port's q k^T for each head, [B, H, T, T], not scaled
        hn = block.ln_1(h)
        return jnp.einsum("bqhd,bkhd->bhqk", block.attn.query(hn), block.attn.key(hn))

    with jax.enable_x64(True):
        logits = np.where(~torch_mask, np.asarray(scores(block, h.detach().numpy())), -np.inf)
    for scale in ("head_dim", "n_embd"):
        w = np.exp(logits / np.sqrt(8 if scale == "head_dim" else 16))
        err = np.abs(w / w.sum(-1, keepdims=True) - weights).max()
        print(f"attention weights, softmax(q k^T / sqrt({scale})) against torch's: "
              + ("the same to float64 rounding" if err <= 1e-14 else f"{err:.2g} apart"))  # fmt: skip
        assert (err <= 1e-14) == (scale == "head_dim")  # float64 sums of 8 products, a softmax of 16

    # GELU: exact against tanh, in both frameworks
    z = np.linspace(-4, 4, 801)
    exact_t, tanh_t = (nn.GELU(approximate=a)(torch.from_numpy(z)).numpy() for a in ("none", "tanh"))
    with jax.enable_x64(True):
        gelu = jax.jit(jax.nn.gelu, static_argnames="approximate")
        exact_j, tanh_j = np.asarray(gelu(z, approximate=False)), np.asarray(gelu(z))
    same = max(np.abs(exact_t - exact_j).max(), np.abs(tanh_t - tanh_j).max())
    gap = np.abs(exact_t - tanh_t).max()
    print("GELU on [-4, 4]: nn.GELU() = jax.nn.gelu(approximate=False), nn.GELU(approximate='tanh') = "
          f"jax.nn.gelu() to float64 rounding; the two forms {gap:.2g} apart")  # fmt: skip
    assert same <= 1e-15 and gap > 1e-4  # float64 libm rounding; the forms differ by 4.7e-4

    # Weight decay on the same numbers: torch's 4 weights are the port's 6 kernels (q, k, v split)
    named = torch_model.named_parameters()  # torch_side's rule
    torch_decayed = sum(p.numel() for n, p in named if p.ndim > 1 and not n.startswith(("wte", "wpe")))
    with jax.enable_x64(True):
        params = nnx.state(port, nnx.Param)
        mask = jax.tree_util.tree_map_with_path(
            lambda path, _: "kernel" in jax.tree_util.keystr(path), params
        )
        jax_decayed = sum(
            p.size for p, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if on
        )
    print(
        f"weight decay on {torch_decayed} of torch's {torch_count} parameters, {jax_decayed} of jax's {jax_count}"
    )
    assert torch_decayed == jax_decayed

    # The engine on the pair, float32 (compare's default adds float64; the checks above have it).
    # It gives a copy of the port torch's weights, cast: the trained float64 port serves.
    torch.manual_seed(0)
    report = parity.compare(GPT(corpus.vocab_size), port, x[:8], y[:8], steps=0, dtypes=("float32",))  # fmt: skip
    show_compare(report)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
