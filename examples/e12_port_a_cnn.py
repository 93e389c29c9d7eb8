"""Porting a CNN: `Conv2d` against `nnx.Conv`, NCHW against NHWC, the flatten trap, `parity.compare`.

The CNN of PyTorch's `examples/mnist` and an idiomatic Flax NNX port of it. The port keeps
Flax's conventions, so the same numbers sit in other places: images and feature maps are
channels-last (`[N, H, W, C]`, torch's are `[N, C, H, W]`), a conv kernel is `[kh, kw, in,
out]` (torch's weight is `[out, in, kh, kw]`), a linear kernel is `[in, out]`. One place has
a trap with no shape error to warn of it: after the last pool, `x.reshape(N, -1)` flattens
`[12, 12, 64]` in (h, w, c) order while torch flattens `[64, 12, 12]` in (c, h, w) order, so
`fc1`'s 9216 input columns must be permuted, not just transposed. Dropout is `nn.Dropout`
and `nnx.Dropout`: off in eval mode on both sides.

`jaxnet.parity.compare` does the whole comparison for any such pair: it carries the torch
weights onto the port by module path with these layout rules, captures every submodule's
output on both sides (forward hooks; `nnx.capture`), and judges the outputs, the loss, every
gradient and a few optimizer steps against noise floors it measures. Leave out the flatten
rule and it names `fc1` as the first layer that differs.
"""

from jaxnet import process

process.prepare(shared=True)  # before torch loads: OpenMP threads sleep between torch and XLA calls

# %% torch
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):  # PyTorch examples/mnist
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):  # x: [N, 1, 28, 28]
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)  # [N, 64, 12, 12] -> [N, 9216] in (c, h, w) order
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def torch_side(images, state):  # images: float64 [N, 1, 28, 28]
    model = Net().double().eval()  # eval: dropout off
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


# %% jax
import jax
import jax.numpy as jnp
from flax import nnx


class FlaxNet(nnx.Module):  # the port, in Flax's channels-last convention
    def __init__(self, rngs, dtype=jnp.float32):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", param_dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", param_dtype=dtype, rngs=rngs)
        self.dropout1 = nnx.Dropout(0.25, rngs=rngs)
        self.dropout2 = nnx.Dropout(0.5, rngs=rngs)
        self.fc1 = nnx.Linear(9216, 128, param_dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):  # x: [N, 28, 28, 1]
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.dropout1(x)
        x = x.reshape(x.shape[0], -1)  # [N, 12, 12, 64] -> [N, 9216] in (h, w, c) order
        x = jax.nn.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return jax.nn.log_softmax(x, axis=1)


def load_torch_state(model, state):  # a torch state_dict (as numpy) into the port
    for name in ("conv1", "conv2"):
        conv = getattr(model, name)
        conv.kernel[...] = state[f"{name}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
        conv.bias[...] = state[f"{name}.bias"]
    w1 = state["fc1.weight"].reshape(128, 64, 12, 12)  # columns in (c, h, w) order
    model.fc1.kernel[...] = w1.transpose(0, 2, 3, 1).reshape(128, 9216).T  # (h, w, c) order, [in, out]
    model.fc1.bias[...] = state["fc1.bias"]
    model.fc2.kernel[...] = state["fc2.weight"].T
    model.fc2.bias[...] = state["fc2.bias"]


def jax_side(images, state):  # images: float64 [N, 1, 28, 28], torch's layout
    model = FlaxNet(nnx.Rngs(0), dtype=images.dtype)
    load_torch_state(model, state)
    model.eval()  # dropout off
    forward = nnx.jit(lambda module, x: module(x))  # one compilation, not one per operation
    return forward(model, images.transpose(0, 2, 3, 1))  # NCHW -> NHWC


# %% check
def main(n: int = 32):  # compare's batch (the tests take 2: the same rows and verdicts)
    import numpy as np

    from examples._common import real_batch
    from jaxnet import parity
    from jaxnet.checkpoint import init_state_dict
    from jaxnet.config import CNNConfig, OptimConfig

    images, _ = real_batch(8, "float64")
    state = init_state_dict(CNNConfig(), seed=0, dtype="float64")
    torch_out = torch_side(images, state)
    with jax.enable_x64(True):  # float64 JAX here only
        jax_out = np.asarray(jax_side(images, state))
    print("log-probabilities of image 0, first 3 classes:")
    print(f"  torch {np.array2string(torch_out[0, :3], precision=8)}")
    print(f"  jax   {np.array2string(jax_out[0, :3], precision=8)}")
    # float64: a conv of 9 taps, one of 288, a linear of 9216 and of 128, each rounding at
    # ~1e-16 relative; their sum stays below 1e-12 of the largest log-probability
    assert np.abs(jax_out - torch_out).max() <= 1e-12 * np.abs(torch_out).max()

    x, y = real_batch(n)
    torch_net = Net()
    torch_net.load_state_dict({k: torch.from_numpy(v) for k, v in init_state_dict(CNNConfig(), 0).items()})
    # float32, the dtype one trains in (compare's default adds float64; the check above has it)
    options = dict(loss="nll", optimizer=OptimConfig(name="adadelta", lr=1.0), steps=2, dtypes=("float32",),
                   channels_last=True, relu_inputs=["conv1", "conv2", "fc1"], pool_inputs=["conv2"])  # fmt: skip
    # compare replaces the port's weights with torch's: built abstractly, its initialisers never run
    port = nnx.eval_shape(lambda: FlaxNet(nnx.Rngs(0)))
    report = parity.compare(torch_net, port, x, y, flatten={"fc1": (64, 12, 12)}, **options)
    sections = sorted({r.section.split(" (")[0] for r in report.rows})
    print(f"compare, with the flatten rule: {len(report.rows)} rows ({', '.join(sections)}), "
          f"{'all within their bounds' if report.passed else 'FAILED'}")  # fmt: skip
    assert report.passed, report.first_failure()
    options |= dict(steps=0)  # the forward rows show it
    broken = parity.compare(torch_net, port, x, y, **options)  # the flatten rule left out
    print("compare, without it: first difference", broken.environment["first difference"].split(":")[0])
    assert not broken.passed and broken.environment["first difference"].startswith("fc1 ")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
