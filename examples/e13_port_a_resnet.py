"""Porting a ResNet: BatchNorm's momentum and running variance, train against eval mode, weight decay off BatchNorm.

torchvision's `BasicBlock` (two 3x3 convs with BatchNorm, a 1x1 projection shortcut where
the shape changes), in the smallest ResNet that holds one: a stem, one stride-2 block, a
global average pool and a `Linear` (the project's `--model resnet` stacks 3 stages of them).
The port keeps Flax's conventions, NHWC maps and HWIO kernels (e12), and four more places
where the two frameworks' defaults differ without any shape error to tell:

- **momentum**: torch's `BatchNorm2d(momentum=0.1)` is the weight of the *new* batch in the
  running averages, Flax's `momentum` that of the *old* average: torch's 0.1 is Flax's 0.9;
  `nnx.BatchNorm`'s default 0.99 would be torch's 0.01. torch's `eps` is 1e-5, as Flax's.
- **running variance**: torch updates it with the *unbiased* batch variance (divided by
  `n - 1`, `n = N * H * W`), `nnx.BatchNorm` with the biased one (divided by `n`), though
  both normalise with the biased one. The port's `BatchNorm2d` takes torch's update (and keeps
  its statistics in the parameters' dtype; `nnx.BatchNorm` keeps them in float32).
- **train and eval mode**: `model.train()` / `model.eval()` on both sides; in train mode a
  batch is normalised with its own statistics and the running ones move, in eval mode the
  running ones are used. The modes give different outputs: evaluate in eval mode.
- **weight decay off BatchNorm and biases**: torch says it with parameter groups, optax with a
  `mask` on `add_decayed_weights`; the same rule on both sides, `ndim > 1`, picks the conv and
  `Linear` weights.

`parity.compare` judges the pair as e12's CNN: outputs of every layer, loss, gradients,
running statistics after a train-mode forward, in eval and train mode.
"""

from jaxnet import process

process.prepare(shared=True)  # before torch loads: OpenMP threads sleep between torch and XLA calls

# %% torch
import torch
from torch import nn


class BasicBlock(nn.Module):  # torchvision's
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)  # momentum=0.1, eps=1e-5
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None  # the projection shortcut, where the shape changes
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNet(nn.Module):  # stem, one stage of one block, average pool, fc
    def __init__(self, c0=4, c1=8, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c0, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.layer1 = nn.Sequential(BasicBlock(c0, c1, stride=2))
        self.fc = nn.Linear(c1, num_classes)

    def forward(self, x):  # x: [N, 1, H, W]
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(x.mean(dim=(2, 3)))  # global average pool


def torch_side(images, labels, state, steps):  # images: [N, 1, 28, 28], state: numpy
    model = ResNet().to(torch.from_numpy(images).dtype)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    decay = [p for p in model.parameters() if p.ndim > 1]  # conv and Linear weights
    rest = [p for p in model.parameters() if p.ndim <= 1]  # BatchNorm's and biases
    groups = [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model.train()  # batch statistics; running ones updated
    losses = []
    for i in range(steps):
        batch = slice(8 * i, 8 * i + 8)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()  # running statistics
    with torch.no_grad():
        logits = model(x[:8]).numpy()
    return losses, logits, {k: v.numpy() for k, v in model.state_dict().items()}


# %% jax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


class BatchNorm2d(nnx.BatchNorm):  # nn.BatchNorm2d's arithmetic, channels last
    def __init__(self, channels, *, dtype, rngs):
        # momentum: Flax's weighs the old average, so torch's 0.1 is 0.9 (nnx's default: 0.99)
        super().__init__(channels, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                         param_dtype=dtype, rngs=rngs)  # fmt: skip
        self.mean = nnx.BatchStat(jnp.zeros(channels, dtype))  # nnx's are float32 in any dtype
        self.var = nnx.BatchStat(jnp.ones(channels, dtype))

    def __call__(self, x):
        old = self.var[...]
        y = super().__call__(x)  # in train mode: batch statistics; running ones updated
        if not self.use_running_average:  # torch updates with the unbiased batch variance
            n = x.size // x.shape[-1]  # values per channel: N * H * W
            unbiased = jnp.var(x, axis=(0, 1, 2)) * n / (n - 1)
            self.var[...] = self.momentum * old + (1 - self.momentum) * unbiased
        return y


def conv(cin, cout, size, stride, dtype, rngs):  # torch's symmetric padding, at any stride
    pad = ((size // 2, size // 2),) * 2
    return nnx.Conv(cin, cout, (size, size), strides=stride, padding=pad, use_bias=False,
                    param_dtype=dtype, rngs=rngs)  # fmt: skip


class FlaxBasicBlock(nnx.Module):
    def __init__(self, inplanes, planes, stride, *, dtype, rngs):
        self.conv1 = conv(inplanes, planes, 3, stride, dtype, rngs)
        self.bn1 = BatchNorm2d(planes, dtype=dtype, rngs=rngs)
        self.conv2 = conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = BatchNorm2d(planes, dtype=dtype, rngs=rngs)
        project = stride != 1 or inplanes != planes  # nnx.List: paths read downsample.0, .1
        self.downsample = nnx.List([conv(inplanes, planes, 1, stride, dtype, rngs),
                                    BatchNorm2d(planes, dtype=dtype, rngs=rngs)]) if project else None  # fmt: skip

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample[1](self.downsample[0](x))
        return jax.nn.relu(out + identity)


class FlaxResNet(nnx.Module):
    def __init__(self, rngs, c0=4, c1=8, num_classes=10, dtype=jnp.float32):
        self.conv1 = conv(1, c0, 3, 1, dtype, rngs)
        self.bn1 = BatchNorm2d(c0, dtype=dtype, rngs=rngs)
        self.layer1 = nnx.List([FlaxBasicBlock(c0, c1, 2, dtype=dtype, rngs=rngs)])
        self.fc = nnx.Linear(c1, num_classes, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):  # x: [N, H, W, 1]
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        for block in self.layer1:
            x = block(x)
        return self.fc(x.mean(axis=(1, 2)))  # global average pool


def load_torch_state(model, state):  # a torch state_dict (as numpy) into the port
    def bn(module, prefix):  # num_batches_tracked has no use at a fixed momentum
        module.scale[...], module.bias[...] = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
        module.mean[...], module.var[...] = state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]

    def kernel(module, prefix):
        module.kernel[...] = state[f"{prefix}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO

    kernel(model.conv1, "conv1")
    bn(model.bn1, "bn1")
    block = model.layer1[0]
    for name in ("conv1", "conv2"):
        kernel(getattr(block, name), f"layer1.0.{name}")
    for name in ("bn1", "bn2"):
        bn(getattr(block, name), f"layer1.0.{name}")
    kernel(block.downsample[0], "layer1.0.downsample.0")
    bn(block.downsample[1], "layer1.0.downsample.1")
    model.fc.kernel[...], model.fc.bias[...] = state["fc.weight"].T, state["fc.bias"]


def jax_side(images, labels, state, steps):  # images: [N, 1, 28, 28], torch's layout
    model = FlaxResNet(nnx.Rngs(0), dtype=images.dtype)
    load_torch_state(model, state)

    def decay(params):  # conv and Linear kernels; not BatchNorm's scale and bias, not biases
        return jax.tree.map(lambda p: p.ndim > 1, params)

    tx = optax.chain(optax.add_decayed_weights(5e-4, mask=decay), optax.sgd(0.1, momentum=0.9, nesterov=True))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)  # the BatchStats update in place too
        optimizer.update(model, grads)
        return loss

    x = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    model.train()
    losses = [float(train_step(model, optimizer, x[8 * i : 8 * i + 8], labels[8 * i : 8 * i + 8]))
              for i in range(steps)]  # fmt: skip
    model.eval()
    return losses, nnx.jit(lambda model, x: model(x))(model, x[:8]), model


# %% check
def main():
    import numpy as np

    from examples._common import real_batch, show, show_compare
    from jaxnet import parity

    steps = 3
    images, labels = real_batch(8 * steps, "float64")
    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in ResNet().double().state_dict().items()}
    torch_losses, torch_logits, torch_state = torch_side(images, labels, state, steps)
    with jax.enable_x64(True):  # float64 JAX here only
        jax_losses, jax_logits, port = jax_side(images, labels, state, steps)
        jax_logits = np.asarray(jax_logits)
        bn = port.layer1[0].bn2
        jax_stats = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    for step in range(steps):
        print(
            f"train-mode loss at step {step + 1}: torch {torch_losses[step]:.8f}  jax {jax_losses[step]:.8f}"
        )
    torch_stats = torch_state["layer1.0.bn2.running_mean"], torch_state["layer1.0.bn2.running_var"]
    show(f"layer1.0.bn2 running mean after {steps} steps", torch_stats[0], jax_stats[0])
    show(f"layer1.0.bn2 running var after {steps} steps", torch_stats[1], jax_stats[1])
    show("eval-mode logits of image 0 after the steps", torch_logits[0], jax_logits[0])
    # float64: a few convs of <= 36 taps and BatchNorm sums of <= 8 * 28 * 28 values, each
    # rounding at ~1e-16 relative, through 3 steps: far below 1e-12 (a momentum of 0.99, the
    # biased variance or a decayed BatchNorm scale would move these by > 1e-4).
    for t, j in [
        (torch_losses, jax_losses),
        (torch_logits, jax_logits),
        *zip(torch_stats, jax_stats, strict=True),
    ]:
        assert np.abs(np.asarray(j) - np.asarray(t)).max() <= 1e-12 * np.abs(np.asarray(t)).max()

    # The running variance and the momentum, on one BatchNorm after one train-mode forward, of
    # a small real batch: the stem's feature map of 2 images, its centre 4x4 (n = 32 values a
    # channel, so that n / (n - 1) shows).
    w = torch.from_numpy(state["conv1.weight"])
    features = torch.nn.functional.conv2d(torch.from_numpy(images[:2]), w, padding=1)[:, :, 12:16, 12:16]
    reference = torch.nn.BatchNorm2d(4).double()  # train mode
    reference(features)  # running_var = 0.9 * 1 + 0.1 * (unbiased batch variance)
    nhwc = features.numpy().transpose(0, 2, 3, 1)
    with jax.enable_x64(True):
        port_bn = BatchNorm2d(4, dtype=jnp.float64, rngs=nnx.Rngs(0))  # nnx modules start in train mode
        forward = nnx.jit(lambda module, x: module(x))  # one compilation, not one per operation
        forward(port_bn, nhwc)
        plain = {
            m: nnx.BatchNorm(4, momentum=m, use_fast_variance=False, rngs=nnx.Rngs(0)) for m in (0.9, 0.99)
        }
        for bn in plain.values():
            forward(bn, nhwc.astype(np.float32))  # float32: nnx's statistics are, in any dtype
        running = {"BatchNorm2d (the port's)": np.asarray(port_bn.var[...])}
        running |= {
            f"nnx.BatchNorm(momentum={m})": np.asarray(bn.var[...], np.float64) for m, bn in plain.items()
        }
    torch_var = reference.running_var.numpy()
    print("running var of channel 0 after one train-mode forward, float64 torch:")
    print(f"  torch nn.BatchNorm2d()        {torch_var[0]:.6f}")
    for name, var in running.items():
        print(f"  {name:29s} {var[0]:.6f}")
    assert np.abs(running["BatchNorm2d (the port's)"] - torch_var).max() <= 1e-12 * torch_var.max()
    # nnx's update takes the biased variance v: 0.1 v / (n - 1) less than torch's, > 1e-5 here;
    # its float32 statistics round at 6e-8 (values near 1): the shortfall shows to 1e-6
    n, v = 32, nhwc.var(axis=(0, 1, 2))
    assert (0.1 * v / (n - 1)).min() > 1e-5
    assert np.abs(torch_var - running["nnx.BatchNorm(momentum=0.9)"] - 0.1 * v / (n - 1)).max() <= 1e-6
    assert np.abs(torch_var - running["nnx.BatchNorm(momentum=0.99)"]).min() > 1e-2  # torch's 0.01

    # eval against train mode: the same weights, other statistics, other outputs
    with jax.enable_x64(True):
        x8 = images[:8].transpose(0, 2, 3, 1)
        eval_mode = np.asarray(forward(port, x8))  # the port is in eval mode since jax_side
        port.train()
        train_mode = np.asarray(forward(port, x8))
    gap = np.abs(train_mode - eval_mode).max()
    print(f"logits of the same images, train mode against eval mode: up to {gap:.2g} apart")
    assert gap > 1e-2

    # weight decay: the same tensors on both sides
    torch_net = ResNet()
    torch_decayed = sorted(k for k, p in torch_net.named_parameters() if p.ndim > 1)
    params = nnx.state(port, nnx.Param)
    mask = jax.tree.map(lambda p: p.ndim > 1, params)  # jax_side's rule for optax
    named = [(".".join(str(k.key) for k in path if hasattr(k, "key")), on)
             for path, on in jax.tree_util.tree_leaves_with_path(mask)]  # fmt: skip
    jax_decayed = sorted(name for name, on in named if on)
    print(f"weight decay on: torch {', '.join(torch_decayed)}\n"
          f"                 jax   {', '.join(jax_decayed)}")  # fmt: skip
    assert [k.rsplit(".", 1)[0] for k in torch_decayed] == [k.rsplit(".", 1)[0] for k in jax_decayed]

    # The engine on the pair, float32 (compare's default adds float64; the checks above have it).
    # It gives a copy of the port torch's weights, cast: the trained float64 port serves.
    x, y = real_batch(8)
    torch.manual_seed(0)
    report = parity.compare(ResNet(), port, x, y, channels_last=True, steps=0,
                            dtypes=("float32",), relu_inputs=["bn1", "layer1.0.bn1"])  # fmt: skip
    show_compare(report)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
