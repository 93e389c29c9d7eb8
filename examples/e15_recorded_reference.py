"""Parity in your own tests: record the CNN's torch reference once, check the port without torch.

A port stays right when its parity check runs on every change, in a CI image that holds JAX
and not torch. `jaxnet.parity.record` runs the comparison once where torch is, with torch on
both sides, and keeps every answer the reference gave (the weights, every submodule's output,
the loss, every gradient, each optimizer step's states, the float64 runs behind the noise
floors) in a bundle directory. The left column is that script, run once; the right column is
the test the port's repository keeps: `assert_parity` runs the same comparison against the
bundle, with the floors measured where it was recorded, in a process where `import torch`
fails. The port and the flatten rule are those of e12; the bundle records the rule, so the
test needs only the bundle and the port. On the command line the same two steps are
`jaxnet parity record --module ... --inputs ... --options ... --out BUNDLE` and
`jaxnet parity check BUNDLE --module ...`.
"""

# %% torch
import torch
import torch.nn.functional as F
from torch import nn

from jaxnet import parity
from jaxnet.config import OptimConfig


class Net(nn.Module):  # PyTorch examples/mnist, as in e12
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
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def record_reference(images, labels, path):  # once, where torch is; commit the bundle or cache it
    torch.manual_seed(0)
    return parity.record(
        Net(), images, labels, path,
        loss="nll", optimizer=OptimConfig(name="adadelta", lr=1.0), steps=1, dtypes=("float32",),
        channels_last=True, flatten={"fc1": (64, 12, 12)},  # the port's layout, recorded with it
        relu_inputs=["conv1", "conv2", "fc1"], pool_inputs=["conv2"],
    )  # fmt: skip


# %% jax
import jax
from flax import nnx

from jaxnet.testing import assert_parity


class FlaxNet(nnx.Module):  # the port of e12, channels-last
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
        self.dropout1 = nnx.Dropout(0.25, rngs=rngs)
        self.dropout2 = nnx.Dropout(0.5, rngs=rngs)
        self.fc1 = nnx.Linear(9216, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):  # x: [N, 28, 28, 1]
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = self.dropout1(x)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return jax.nn.log_softmax(x, axis=1)


def test_port_matches_torch(path="tests/reference/cnn"):  # in your tests/: no torch needed
    port = nnx.eval_shape(lambda: FlaxNet(nnx.Rngs(0)))  # abstract: the bundle's weights replace its own
    return assert_parity(path, port)  # raises AssertionError: what differs where


# %% check
def main():
    import json
    import tempfile
    from pathlib import Path

    from examples._common import real_batch, run_without_torch
    from examples.build import parse

    images, labels = real_batch(2)  # a tiny batch and one step: the example shows the workflow
    with tempfile.TemporaryDirectory() as tmp:
        path = record_reference(images, labels, Path(tmp) / "cnn")
        index = json.loads((path / "bundle.json").read_text())
        size = sum(f.stat().st_size for f in path.iterdir())
        print(f"recorded: {len(index['answers'])} answers of torch, {size / 1e9:.2f} GB in {sorted(f.name for f in path.iterdir())}")  # fmt: skip
        # the right column, as it stands, in a fresh process where `import torch` raises ImportError
        test = parse("e15_recorded_reference").jax_code
        got = json.loads(run_without_torch(test + CHECK, str(path)))
    print(f"the test, without torch: {got['summary']}; torch imported: {got['torch']}")
    assert got["passed"] and got["torch"] is False
    assert got["differ"] is False  # recorded and checked on one machine here


CHECK = """
import json, sys
report = test_port_matches_torch(sys.argv[1])
summary = f"{len(report.rows)}/{len(report.rows)} rows within their bounds"
print(json.dumps({"passed": report.passed, "summary": summary, "torch": "torch" in sys.modules,
                  "differ": "machines differ" in report.environment}))
"""


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # the repository root, so that `python examples/<this file>.py` finds the `examples` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
