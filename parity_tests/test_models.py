"""The ResNet and GPT pairs through their hand-written weight mappings (no harness).

Each torch model (``torchref.models``) is built with its own initialisation in float64, its
state dict goes through the port's ``from_torch_state`` (numpy) into the NNX model
(``jaxnet.models``), and both run on the same real inputs: Fashion-MNIST test images for the
ResNet, windows of the fortunes corpus for the GPT. Errors are normwise relative,
``max|a - b| / max|b|`` (``jaxnet.numerics.rel_error``).

float64 bounds, and why: u = 2^-53 = 1.1e-16. The frameworks sum each reduction (a conv's
``9 * C_in`` products, a Linear's fan-in, a BatchNorm's or LayerNorm's mean over its ``n``
elements) in different orders and blockings; the worst case moves a length-K sum by
``K * u`` of its terms' magnitude, and errors add along the layers a value passes through.
So each bound is ``depth * K_max * u`` (worst case, not the typical ``sqrt(K) * u``), with
the figures measured on this project's CPUs written beside it. A porting bug (a kernel not
transposed, 'SAME' padding on a stride-2 conv, torch's BatchNorm momentum given to Flax, the
tanh GELU, Flax's LayerNorm epsilon, the mask's polarity) moves the outputs by 1e-6 to 1e0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jaxnet import text
from jaxnet.errors import CheckpointError
from jaxnet.models import gpt as jgpt
from jaxnet.models import resnet as jresnet
from jaxnet.numerics import rel_error
from torchref.models import gpt as tgpt
from torchref.models import resnet as tresnet

U64 = 2.0**-53
N = 8  # real images per comparison: every code path, cheap on 2 cores

# ------------------------------------------------------------------------------- ResNet

CHANNELS, BLOCKS = (4, 8, 8), 2  # tiny, but both shortcut kinds and a second block per stage
# A value passes through at most 1 + 3 * 2 * BLOCKS = 13 conv/BatchNorm pairs (the shortcut
# path is shorter), the head's mean pool and the Linear; the longest conv reduction is
# 9 * 8 = 72 products. In train mode each BatchNorm also takes a mean and a variance over
# n = N * H * W elements (at most N * 28 * 28 = 6272), and its output carries their error.
RESNET_DEPTH, RESNET_K, RESNET_N = 15, 9 * 8, N * 28 * 28


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def resnets(fmnist):
    """torch's float64 ResNet (torchvision's init, seed 0) and the NNX port loaded from it."""
    torch.manual_seed(0)
    model = tresnet.ResNet(CHANNELS, BLOCKS).double()
    with jax.enable_x64(True):  # built abstractly (nothing initialised), then given torch's state
        port = nnx.eval_shape(lambda: jresnet.ResNet(CHANNELS, BLOCKS, dtype=jnp.float64, rngs=nnx.Rngs(0)))
        jresnet.load_torch_state(port, numpy_state(model))
    return model, port, fmnist.test[: 2 * N].float_images("float64")


def batch_sizes(model: tresnet.ResNet, x: np.ndarray) -> dict[str, int]:
    """``n = N * H * W`` each BatchNorm averages over, by its torch name (from a hooked forward)."""
    sizes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            hook = lambda m, args, out, name=name: sizes.__setitem__(name, out.numel() // out.shape[1])  # noqa: E731
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    for hook in hooks:
        hook.remove()
    return sizes


def test_resnet_train_mode_forward_and_running_statistics(resnets):
    """One train-mode forward from the same state: the same outputs (both normalise with the
    biased batch variance) and the same running statistics (the port's TorchBatchNorm updates
    the running variance with torch's unbiased one; plain nnx.BatchNorm would be n/(n-1) off)."""
    model, port, images = resnets
    x = images[:N]
    sizes = batch_sizes(model, x)
    before = numpy_state(model)
    model.train()
    out_t = model(torch.from_numpy(x)).detach().numpy()
    after = numpy_state(model)
    with jax.enable_x64(True):
        trained = jresnet.load_torch_state(nnx.clone(port), before)  # whatever ran before
        trained.train()
        out_j = np.asarray(trained(jnp.asarray(nhwc(x))))
        flax_state = jresnet.to_torch_state(nnx.to_pure_dict(nnx.state(trained)))
    # Figures measured on a 2-core AMD EPYC: outputs 1.3e-14, running means 1.7e-14, the
    # running variances' relation 4.1e-14 (the stats inherit the train-mode outputs' error).
    bound = RESNET_DEPTH * (RESNET_K + RESNET_N) * U64  # 1.1e-11
    assert rel_error(out_j, out_t) <= bound
    for name, n in sizes.items():
        old_var = before[f"{name}.running_var"]
        stat_bound = bound + n * U64  # one more mean over n elements on top of its input's error
        mean_t, mean_j = after[f"{name}.running_mean"], flax_state[f"{name}.running_mean"]
        assert rel_error(mean_j, mean_t) <= stat_bound, name
        new_t = after[f"{name}.running_var"] - 0.9 * old_var  # 0.1 * the batch variance each side
        new_j = flax_state[f"{name}.running_var"] - 0.9 * old_var
        assert rel_error(new_j, new_t) <= stat_bound, name
        # ... where the biased variance would be off by 1/(n-1) >= 1.6e-4, far above stat_bound.
        assert rel_error(new_j * (n - 1) / n, new_t) >= 0.5 / (n - 1), name


def test_resnet_eval_forward_on_torch_running_statistics(resnets):
    """Eval mode with non-trivial running statistics (torch's, after a train-mode forward) loaded
    through the mapping: the same logits; and the mapping's inverse gives torch's state back."""
    model, port, images = resnets
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images[N:]))  # running statistics away from their (0, 1) start
    model.eval()
    state = numpy_state(model)
    with torch.no_grad():
        out_t = model(torch.from_numpy(images[:N])).numpy()
    with jax.enable_x64(True):
        loaded = jresnet.load_torch_state(nnx.clone(port), state)
        loaded.eval()
        out_j = np.asarray(loaded(jnp.asarray(nhwc(images[:N]))))
        count = int(state["bn1.num_batches_tracked"])  # torch's count; Flax keeps none
        back = jresnet.to_torch_state(nnx.to_pure_dict(nnx.state(loaded)), num_batches_tracked=count)
    # eval mode: no batch statistics, the convs' reductions only
    assert rel_error(out_j, out_t) <= RESNET_DEPTH * RESNET_K * U64  # 1.2e-13; measured 3.2e-16 (AMD EPYC)
    assert back.keys() == state.keys()
    assert all(np.array_equal(back[k], state[k]) for k in state)  # a permutation: exact


def test_resnet_mapping_names_a_missing_key(resnets):
    model, _, _ = resnets
    state = numpy_state(model)
    del state["layer2.0.downsample.1.running_var"]
    with pytest.raises(CheckpointError, match=r"missing key 'layer2\.0\.downsample\.1\.running_var'"):
        jresnet.from_torch_state(state)


def test_stride_two_padding_is_symmetric_as_in_torch():
    """'SAME' on a stride-2 3x3 conv over 28 pixels pads (0, 1), torch's padding=1 pads (1, 1):
    the port's explicit padding matches torch, 'SAME' would not (flax#2993)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 1, 28, 28)), rng.standard_normal((2, 1, 3, 3))
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=1
    ).numpy()
    with jax.enable_x64(True):
        kernel = jnp.asarray(w.transpose(2, 3, 1, 0))
        conv = lambda pad: np.asarray(  # noqa: E731
            jax.lax.conv_general_dilated(
                jnp.asarray(nhwc(x)), kernel, (2, 2), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        ).transpose(0, 3, 1, 2)
        assert rel_error(conv(jresnet.PAD1), expected) <= 9 * U64  # 9 products per output
        assert rel_error(conv("SAME"), expected) > 0.1


# ---------------------------------------------------------------------------------- GPT

GPT_CONFIG = {"vocab_size": 96, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.0}
# Per block a value passes through LayerNorm, the q/k/v projections, the scores, the softmax,
# the weighted sum, out_proj, LayerNorm, c_fc, GELU, c_proj: ~10 steps, two blocks, then
# ln_f and the head; the longest reduction is c_proj's fan-in 4 * 16 = 64.
GPT_DEPTH, GPT_K = 2 * 10 + 2, 4 * 16


@pytest.fixture(scope="module")
def gpts():
    torch.manual_seed(0)
    model = tgpt.GPT(tgpt.GPTConfig(**GPT_CONFIG)).double().eval()
    with jax.enable_x64(True):
        port = nnx.eval_shape(
            lambda: jgpt.GPT(jgpt.GPTConfig(**GPT_CONFIG), dtype=jnp.float64, rngs=nnx.Rngs(0))
        )
        jgpt.load_torch_state(port, numpy_state(model))
        port.eval()
    corpus = text.load()  # real characters: three validation windows of the fortunes corpus
    assert corpus.vocab_size == GPT_CONFIG["vocab_size"]
    ids, _ = corpus.batches("val", GPT_CONFIG["block_size"], 3, seed=0, step=0)
    return model, port, ids


def gpt_logits(gpts, padding: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    model, port, ids = gpts
    mask = None if padding is None else torch.from_numpy(padding)
    out_t = model(torch.from_numpy(ids), mask).detach().numpy()  # autograd on: torch's general path
    with jax.enable_x64(True):
        out_j = np.asarray(port(jnp.asarray(ids), padding))
    return out_t, out_j


def test_gpt_eval_forward(gpts):
    out_t, out_j = gpt_logits(gpts, None)
    assert rel_error(out_j, out_t) <= GPT_DEPTH * GPT_K * U64  # 1.6e-13; measured 3.7e-16 (AMD EPYC)


def test_gpt_forward_with_a_padding_mask(gpts):
    """Right padding and holes, never a position whose every allowed key is padding (there the
    frameworks differ by design: see ``jaxnet.models.gpt.GPT.__call__``)."""
    padding = np.zeros((3, GPT_CONFIG["block_size"]), bool)
    padding[0, 11:] = True  # right padding
    padding[1, [2, 3, 9]] = True  # holes: later positions must ignore those keys
    out_t, out_j = gpt_logits(gpts, padding)
    assert rel_error(out_j, out_t) <= GPT_DEPTH * GPT_K * U64  # 1.6e-13; measured 3.7e-16 (AMD EPYC)
    unmasked, _ = gpt_logits(gpts, None)
    assert rel_error(out_t, unmasked) > 1e-4  # the mask changes the outputs: the check can fail


def test_gpt_mapping_round_trip_and_the_tied_head(gpts):
    model, port, _ = gpts
    state = numpy_state(model)
    back = jgpt.to_torch_state(nnx.to_pure_dict(nnx.state(port, nnx.Param)))
    assert back.keys() == state.keys()  # lm_head.weight included, as torch's state_dict has it
    assert all(np.array_equal(back[k], state[k]) for k in state)  # reshapes and transposes: exact
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from wte\.weight"):
        jgpt.from_torch_state(state, GPT_CONFIG["n_head"])


# --------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("family", ["resnet", "gpt"])
def test_weight_decay_falls_on_the_same_tensors(family):
    """torch's parameter groups and the port's optax mask name the same tensors (through the
    mapping): the ResNet's conv and Linear weights; the GPT's projections, not its embeddings."""
    if family == "resnet":
        model, port = tresnet.ResNet(CHANNELS, 1), jresnet
        abstract = nnx.eval_shape(lambda: jresnet.ResNet(CHANNELS, 1, rngs=nnx.Rngs(0)))
    else:
        model, port = tgpt.GPT(tgpt.GPTConfig(**GPT_CONFIG)), jgpt
        abstract = nnx.eval_shape(lambda: jgpt.GPT(jgpt.GPTConfig(**GPT_CONFIG), rngs=nnx.Rngs(0)))
    decayed = {id(p) for p in port_groups(model, family)[0]["params"]}
    torch_names = {name for name, p in model.named_parameters() if id(p) in decayed}
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    mask = port.decay_mask(params)
    as_arrays = jax.tree.map(lambda m, p: np.full(p.shape, m), mask, params)  # the mask in torch's keys
    jax_names = {k for k, v in port.to_torch_state(as_arrays).items() if v.all() and k != "lm_head.weight"}
    assert jax_names == torch_names
    expected = (
        {"conv1.weight", "fc.weight"}
        if family == "resnet"
        else {"h.0.attn.in_proj_weight", "h.1.mlp.c_fc.weight"}
    )
    assert expected <= jax_names and not {"fc.bias", "bn1.weight", "wte.weight", "wpe.weight"} & jax_names


def port_groups(model, family: str) -> list[dict]:
    return (tresnet if family == "resnet" else tgpt).param_groups(model, 0.1)


def test_gpt_samples_the_same_text_in_both_frameworks(gpts):
    """``jaxnet.text.generate`` on either model draws the same characters (float64 logits agree
    to ~1e-16, far from any CDF boundary at these draws)."""
    model, port, ids = gpts
    corpus = text.load()
    prompt = corpus.encode("The ")
    rows = ids.shape[0]  # the fixture's batch shape: JAX reuses the ops compiled for it

    def torch_logits(window: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.repeat(window, rows, 0)))[:1].numpy()

    def jax_logits(window: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            return np.asarray(port(jnp.asarray(np.repeat(window, rows, 0))))[:1]

    kwargs = {"block_size": GPT_CONFIG["block_size"], "seed": 0}
    sample_t = text.generate(torch_logits, prompt, 8, **kwargs)
    sample_j = text.generate(jax_logits, prompt, 8, **kwargs)
    assert corpus.decode(sample_j) == corpus.decode(sample_t)
