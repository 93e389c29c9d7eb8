"""Layout rules by module type: where a torch module's parameters sit in its NNX port (numpy only).

The rule is chosen by the torch module's type (read off the module, :func:`torchref.capture.module_kinds`),
never by an array's rank, and the NNX module found at the same path must be of the matching
class, so a wrong rule cannot pass unnoticed::

    torch                                  Flax NNX                                 rule
    Linear.weight [O, I]                   Linear.kernel [I, O]                     transposed
    ConvNd.weight [O, I, *k]               Conv.kernel [*k, I, O]                   any rank
    ConvTransposeNd.weight [I, O, *k]      ConvTranspose.kernel [*k, I, O]          flipped (or
                                                                                    [*k, O, I] with transpose_kernel)
    BatchNormNd weight, bias,              BatchNorm scale, bias,
      running_mean, running_var            mean, var (nnx.BatchStat)
    LayerNorm / GroupNorm / RMSNorm weight scale                                    as is
    Embedding.weight                       Embed.embedding                          as is
    MultiheadAttention.in_proj_weight      query/key/value.kernel [E, H, D]         split in three,
      [3E, E], in_proj_bias [3E]           query/key/value.bias [H, D]              transposed
    MultiheadAttention.out_proj.weight     out.kernel [H, D, E]                     transposed
      [E, E]

Anything else takes a user :class:`Rule` (``compare(..., rules={"torch.path": Rule(...)})``).

Example:
    >>> w = np.arange(6.0).reshape(2, 3)                       # torch Linear(3, 2).weight
    >>> RULES["linear"].from_torch({"weight": w}, {"kernel": (3, 2)})["kernel"].shape
    (3, 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from jaxnet.errors import JaxnetError
from jaxnet.layout import Layout, keys

Arrays = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]

# The NNX classes each torch kind must meet at the same path (subclasses count).
NNX_CLASSES = {
    "linear": ("Linear", "LinearGeneral"),
    "conv": ("Conv",),
    "conv_transpose": ("ConvTranspose",),
    "batchnorm": ("BatchNorm",),
    "layernorm": ("LayerNorm",),
    "groupnorm": ("GroupNorm",),
    "rmsnorm": ("RMSNorm",),
    "embedding": ("Embed",),
    "mha": ("MultiHeadAttention",),
}


@dataclass(frozen=True)
class Rule:
    """How one torch module's parameters become its NNX port's, and back.

    Attributes:
        to_torch: ``{nnx leaf path below the module: array} -> {torch parameter name: array}``
            (also applied to gradients and optimizer buffers, which share the layout).
        from_torch: ``({torch name: array}, {nnx leaf path: shape}) -> {nnx leaf path: array}``.
    """

    to_torch: Callable[[Arrays], Arrays]
    from_torch: Callable[[Arrays, Shapes], Arrays]


def _move(array: np.ndarray, axes) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, axes))


def _renamed(pairs: dict[str, str]) -> Rule:
    """Arrays as they are, under other names (``{nnx name: torch name}``)."""
    back = {t: n for n, t in pairs.items()}
    return Rule(
        lambda p: {pairs[k]: v for k, v in p.items() if k in pairs},
        lambda t, shapes: {back[k]: v for k, v in t.items() if k in back},
    )


def _conv_to_torch(p: Arrays) -> Arrays:
    k = p["kernel"]  # [*k, I, O] -> [O, I, *k]
    n = k.ndim - 2
    return {"weight": _move(k, (n + 1, n, *range(n)))} | ({"bias": p["bias"]} if "bias" in p else {})


def _conv_from_torch(t: Arrays, shapes: Shapes) -> Arrays:
    w = t["weight"]  # [O, I, *k] -> [*k, I, O]
    n = w.ndim - 2
    return {"kernel": _move(w, (*range(2, n + 2), 1, 0))} | ({"bias": t["bias"]} if "bias" in t else {})


def conv_transpose(transpose_kernel: bool) -> Rule:
    """torch's ``[I, O, *k]`` against NNX's ``[*k, I, O]`` spatially flipped (``transpose_kernel``
    False: NNX runs a plain convolution of the dilated input) or ``[*k, O, I]`` as is (True:
    ``lax.conv_transpose`` flips and swaps the kernel itself)."""

    def to_torch(p: Arrays) -> Arrays:
        k = p["kernel"]
        n = k.ndim - 2
        spatial = tuple(range(n))
        if not transpose_kernel:
            k = np.flip(k, spatial)  # [*k, I, O] -> flip -> [I, O, *k]
            w = _move(k, (n, n + 1, *spatial))
        else:  # [*k, O, I] -> [I, O, *k]
            w = _move(k, (n + 1, n, *spatial))
        return {"weight": w} | ({"bias": p["bias"]} if "bias" in p else {})

    def from_torch(t: Arrays, shapes: Shapes) -> Arrays:
        w = t["weight"]
        n = w.ndim - 2
        if not transpose_kernel:
            k = np.ascontiguousarray(np.flip(_move(w, (*range(2, n + 2), 0, 1)), tuple(range(n))))
        else:
            k = _move(w, (*range(2, n + 2), 1, 0))
        return {"kernel": k} | ({"bias": t["bias"]} if "bias" in t else {})

    return Rule(to_torch, from_torch)


def linear(flatten: tuple[int, int, int] | None = None) -> Rule:
    """``weight [O, I] = kernel.T``; ``flatten=(C, H, W)``: the Linear reads a channels-last
    flatten, so its columns are permuted too (torch's C*H*W order against the port's H*W*C)."""

    def to_torch(p: Arrays) -> Arrays:
        k = p["kernel"]
        if flatten:  # [H*W*C, O] -> [C*H*W, O]
            c, h, w = flatten
            k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
        return {"weight": np.ascontiguousarray(k.T)} | ({"bias": p["bias"]} if "bias" in p else {})

    def from_torch(t: Arrays, shapes: Shapes) -> Arrays:
        k = t["weight"].T
        if flatten:  # [C*H*W, O] -> [H*W*C, O]
            c, h, w = flatten
            k = k.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
        return {"kernel": np.ascontiguousarray(k)} | ({"bias": t["bias"]} if "bias" in t else {})

    return Rule(to_torch, from_torch)


_QKV = ("query", "key", "value")


def _mha_to_torch(p: Arrays) -> Arrays:
    e, h, d = p["query.kernel"].shape
    out = {  # torch computes x @ W.T with W = [W_q; W_k; W_v], each [H*D, E]
        "in_proj_weight": np.concatenate([p[f"{n}.kernel"].reshape(e, h * d).T for n in _QKV]),
        "out_proj.weight": np.ascontiguousarray(p["out.kernel"].reshape(h * d, -1).T),
    }
    if "query.bias" in p:
        out["in_proj_bias"] = np.concatenate([p[f"{n}.bias"].reshape(-1) for n in _QKV])
    if "out.bias" in p:
        out["out_proj.bias"] = p["out.bias"]
    return out


def _mha_from_torch(t: Arrays, shapes: Shapes) -> Arrays:
    e, h, d = shapes["query.kernel"]
    if "in_proj_weight" not in t:
        raise JaxnetError(
            "nn.MultiheadAttention with separate q/k/v projections (kdim/vdim) has no packed "
            "in_proj_weight: give it a Rule"
        )
    parts = np.split(t["in_proj_weight"], 3)
    out = {
        f"{n}.kernel": np.ascontiguousarray(w.T.reshape(e, h, d)) for n, w in zip(_QKV, parts, strict=True)
    }
    if "in_proj_bias" in t:
        out |= {
            f"{n}.bias": b.reshape(h, d) for n, b in zip(_QKV, np.split(t["in_proj_bias"], 3), strict=True)
        }
    out["out.kernel"] = np.ascontiguousarray(t["out_proj.weight"].T.reshape(h, d, -1))
    if "out_proj.bias" in t:
        out["out.bias"] = t["out_proj.bias"]
    return out


_NORM = _renamed({"scale": "weight", "bias": "bias"})

RULES: dict[str, Rule] = {
    "linear": linear(),
    "conv": Rule(_conv_to_torch, _conv_from_torch),
    "conv_transpose": conv_transpose(False),
    "batchnorm": _renamed({"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}),
    "layernorm": _NORM,
    "groupnorm": _NORM,
    "rmsnorm": _NORM,
    "embedding": _renamed({"embedding": "weight"}),
    "mha": Rule(_mha_to_torch, _mha_from_torch),
}

NEEDS = (
    "a Rule(to_torch, from_torch) in compare(..., rules={path: Rule}); built in: Linear, Conv1d/2d/3d, "
    "ConvTranspose1d/2d/3d, BatchNorm1d/2d/3d, LayerNorm, GroupNorm, RMSNorm, Embedding, MultiheadAttention"
)


def channel_last(value: np.ndarray) -> np.ndarray:
    """``[N, C, *spatial] -> [N, *spatial, C]`` for any number of spatial axes."""
    return _move(value, (0, *range(2, value.ndim), 1))


def channel_first(value: np.ndarray) -> np.ndarray:
    """``[N, *spatial, C] -> [N, C, *spatial]``."""
    return _move(value, (0, value.ndim - 1, *range(1, value.ndim - 1)))


@dataclass(frozen=True)
class PortLayout(Layout):
    """A :class:`~jaxnet.layout.Layout` whose parameters move by the rule of their torch module.

    Attributes:
        kinds: torch module path -> kind (``linear``, ``conv``, ``batchnorm``, ``mha``...) of
            every module that holds parameters; modules inside an ``nn.MultiheadAttention`` are
            its own (its ``out_proj``).
        rules: torch module path -> the :class:`Rule` that places its parameters.
    """

    kinds: dict[str, str] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # NNX leaf path -> the torch key it lands in

    def torch_name(self, path) -> str:
        """The torch key an NNX leaf lands in (``attn.query.bias`` -> ``attn.in_proj_bias``), once
        :meth:`leaf_names` filled ``names``; else the plain renaming."""
        parts = path.split(".") if isinstance(path, str) else keys(path)
        return self.names.get(".".join(parts)) or super().torch_name(parts)

    def leaf_names(self, shapes: Shapes) -> dict[str, str]:
        """``{NNX leaf path: torch key}``, found by running each rule on a one-hot group: the
        torch tensor that comes out non-zero is where the leaf lands (any rule, the user's too)."""
        owners = {p: self.split_nnx(p) for p in shapes}
        out = {}
        for path, (owner, below) in owners.items():
            group = {b: np.zeros(shapes[q]) for q, (o, b) in owners.items() if o == owner}
            group[below] = np.ones(shapes[path])
            hit = [k for k, v in self.rules[owner].to_torch(group).items() if np.any(v)]
            out[path] = (f"{owner}.{hit[0]}" if owner else hit[0]) if hit else path
        return out

    def owner(self, module: str) -> str | None:
        """The torch module whose rule places what sits at ``module`` (itself or an ancestor)."""
        found = [p for p in self.rules if module == p or module.startswith(p + ".") or p == ""]
        return max(found, key=len) if found else None

    def split_nnx(self, path: str) -> tuple[str, str]:
        """An NNX leaf path (dotted, as NNX names it) as ``(owner, path below the owner)``.

        Raises:
            JaxnetError: no rule places it.
        """
        parts = path.split(".")
        module, leaf = self.torch_module(parts[:-1]), parts[-1]
        owner = self.owner(module)
        if owner is None:
            raise JaxnetError(
                f"nnx parameter {path!r} (torch module {module!r}): no layout rule places it; {NEEDS}"
            )
        below = module[len(owner) :].lstrip(".")
        return owner, f"{below}.{leaf}" if below else leaf

    def leaves_to_torch(self, flat: Arrays) -> Arrays:
        """``{NNX leaf path: array}`` (parameters, gradients, optimizer buffers) in torch's names."""
        groups: dict[str, Arrays] = {}
        for path, value in flat.items():
            owner, below = self.split_nnx(path)
            groups.setdefault(owner, {})[below] = np.asarray(value)
        out: Arrays = {}
        for owner, group in groups.items():
            for name, value in self.rules[owner].to_torch(group).items():
                out[f"{owner}.{name}" if owner else name] = value
        return out

    def leaves_from_torch(self, state: Arrays, shapes: Shapes) -> Arrays:
        """``{NNX leaf path: array}`` for the NNX leaves ``shapes`` names, from a torch state dict.

        Raises:
            JaxnetError: an NNX leaf the torch state does not give.
        """
        owners = {path: self.split_nnx(path) for path in shapes}
        out: Arrays = {}
        for owner in {o for o, _ in owners.values()}:
            mine = {below: shapes[p] for p, (o, below) in owners.items() if o == owner}
            prefix = f"{owner}." if owner else ""
            theirs = {
                k[len(prefix) :]: np.asarray(v)
                for k, v in state.items()
                if k.startswith(prefix) and self.owner(k.rsplit(".", 1)[0] if "." in k else "") == owner
            }
            try:
                placed = self.rules[owner].from_torch(theirs, mine)
            except KeyError as err:
                raise JaxnetError(
                    f"torch module {owner!r}: no parameter {err.args[0]!r} for its port"
                ) from None
            for path, (o, below) in owners.items():
                if o == owner:
                    if below not in placed:
                        raise JaxnetError(
                            f"nnx parameter {path!r}: the rule of torch module {owner!r} does not place it"
                        )
                    out[path] = placed[below]
        return out
