"""``parity.compare`` on a user's module pair, the layout rules, and the CNN through the harness.

The example ``examples/e12_port_a_cnn.py`` (run by the examples' tests) compares an idiomatic
channels-last NNX port of the examples/mnist CNN and catches the flatten trap; these tests
hold the rest: names that do not line up are an error listing both sides, a mapping lines
them up, a wrong backward is named as such, the layout rules invert each other, and the CNN
trains, resumes and reports through the same commands as the MLP.
"""

from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnet import parity, run
from jaxnet.backends import get_backend
from jaxnet.checkpoint import init_state_dict
from jaxnet.config import CNN_RECIPE, CNNConfig, TrainConfig
from jaxnet.data import to_float
from jaxnet.errors import JaxnetError
from jaxnet.layout import Layout
from parity_tests.nnx_ports import blank


class TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)
        )
        self.classifier = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x.flatten(1))))


class NNXMLP(nnx.Module):
    """The same network, its head named differently (``head``, where torch says ``classifier``)."""

    def __init__(self, rngs: nnx.Rngs, relu=nnx.relu) -> None:
        self.features = nnx.Sequential(nnx.Linear(784, 64, rngs=rngs), relu, nnx.Linear(64, 32, rngs=rngs))
        self.head = nnx.Linear(32, 10, rngs=rngs)
        self.relu = relu

    def __call__(self, x):
        return self.head(self.relu(self.features(x.reshape(x.shape[0], -1))))


@pytest.fixture(scope="module")
def batch(fmnist):
    return fmnist.train[:32].float_images(), fmnist.train.labels[:32]


def test_unmapped_names_are_an_error_listing_both_sides(batch):
    torch.manual_seed(0)
    with pytest.raises(JaxnetError) as err:
        parity.compare(TorchMLP(), blank(NNXMLP), *batch)
    message = str(err.value)
    assert "torch only: classifier.bias, classifier.weight" in message
    assert "nnx only (as torch would name them): head.bias, head.weight" in message


def test_a_shape_mismatch_is_an_error_naming_the_parameter(batch):
    class Narrow(NNXMLP):
        def __init__(self, rngs: nnx.Rngs) -> None:
            super().__init__(rngs)
            self.head = nnx.Linear(32, 9, rngs=rngs)

    with pytest.raises(JaxnetError, match=r"classifier.weight: torch \[10, 32\], nnx \[9, 32\]"):
        parity.compare(TorchMLP(), blank(Narrow), *batch, mapping={"classifier": "head"})


def test_a_mapping_lines_the_names_up_and_the_pair_agrees(batch):
    torch.manual_seed(0)
    report = parity.compare(
        TorchMLP(),
        nnx.eval_shape(lambda: NNXMLP(nnx.Rngs(0))),  # its initial weights are torch's: built abstractly
        *batch,
        mapping={"classifier": "head"},
        steps=3,
        relu_inputs=["features.0"],
    )
    assert report.passed, [(r.section, r.quantity, r.dtype, r.ratio) for r in report.failures]
    forward = {r.quantity for r in report.rows if r.section == "forward"}
    assert {"features.0", "features.2", "classifier", "output", "loss"} <= forward
    steps = {r.quantity for r in report.rows if r.section.startswith("step")}
    assert "sgd: classifier.weight" in steps and any(q.startswith("sgd: features.0") for q in steps)
    assert report.environment["first difference"].startswith("none")


def test_a_port_built_abstractly_gives_the_concrete_ports_rows(batch):
    """``nnx.eval_shape(lambda: Port(...))`` skips the port's initialisers (compare replaces its
    weights with torch's): each row is the one a port with real arrays gets, bit for bit (the
    same weights, the same programs, one CPU); float64, where the abstract float32 leaves are
    cast (the mapping test above steps an abstract port in both dtypes)."""
    options = dict(mapping={"classifier": "head"}, steps=0, dtypes=("float64",), relu_inputs=["features.0"])
    torch.manual_seed(0)
    net = TorchMLP()
    abstract = nnx.eval_shape(lambda: NNXMLP(nnx.Rngs(0)))
    rows = [parity.compare(net, port, *batch, **options).rows for port in (abstract, blank(NNXMLP))]
    key = lambda r: (r.section, r.quantity, r.dtype, r.err, r.floor, r.passed)  # noqa: E731
    assert [key(r) for r in rows[0]] == [key(r) for r in rows[1]] and all(r.passed for r in rows[0])
    assert isinstance(abstract.head.kernel.get_value(), jax.ShapeDtypeStruct)  # the user's module: as it was


def test_an_abstract_port_with_state_torch_does_not_replace_is_an_error(batch):
    """Built abstractly, a port's constant (here a scale applied to the output) would be zeros
    for good: torch's state_dict has nothing to load into it. One line names it."""

    class Scaled(NNXMLP):
        def __init__(self, rngs: nnx.Rngs) -> None:
            super().__init__(rngs)
            self.scale = nnx.Variable(jnp.float32(2.0))

        def __call__(self, x):
            return super().__call__(x) * self.scale[...]

    with pytest.raises(JaxnetError, match=r"built abstractly .* do not replace: scale; build it concretely"):
        parity.compare(
            TorchMLP(), nnx.eval_shape(lambda: Scaled(nnx.Rngs(0))), *batch, mapping={"classifier": "head"}
        )


def test_a_wrong_backward_is_named_as_one(batch):
    """A ReLU whose derivative at 0 is 1, hit by giving one unit a pre-activation of exactly 0
    for every example (zero weights into it, zero bias): the forward agrees, its gradients not."""

    @jax_custom_relu
    def relu(x):
        return nnx.relu(x)

    torch.manual_seed(0)
    torch_net = TorchMLP()
    with torch.no_grad():
        torch_net.features[0].weight[:8] = 0
        torch_net.features[0].bias[:8] = 0
    report = parity.compare(
        torch_net,
        blank(NNXMLP, relu=relu),
        *batch,
        mapping={"classifier": "head"},
        steps=1,
        dtypes=("float64",),
    )
    first = report.first_failure()
    assert first is not None and first.section == "gradient", first
    assert all(r.passed for r in report.rows if r.section == "forward")
    assert report.environment["first difference"].startswith("gradient features.0")


def jax_custom_relu(f):
    import jax

    @jax.custom_jvp
    def relu(x):
        return f(x)

    @relu.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return relu(x), t * (x >= 0).astype(x.dtype)  # 1 at 0: torch's is 0

    return relu


@settings(max_examples=20, deadline=None)
@given(
    c=st.integers(1, 4),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    out=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_layout_rules_invert_each_other(c, h, w, out, seed):
    """Conv kernels (HWIO <-> OIHW) and a Linear after a channels-last flatten round-trip, and
    the flatten rule matches flattening a channels-last map against a channels-first one."""
    rng = np.random.default_rng(seed)
    layout = Layout(flatten={"fc": (c, h, w)}, channels_last=True)
    kernel = rng.standard_normal((h * w * c, out))
    name, weight = layout.to_torch(("fc", "kernel"), kernel)
    assert name == "fc.weight" and weight.shape == (out, c * h * w)
    assert np.array_equal(layout.from_torch(name, weight, kernel=True), kernel)
    fmap = rng.standard_normal((2, c, h, w))  # torch's NCHW map
    torch_out = fmap.reshape(2, -1) @ weight.T
    flax_out = layout.activation_from_torch(fmap).reshape(2, -1) @ kernel
    np.testing.assert_allclose(flax_out, torch_out, rtol=1e-12, atol=1e-12)  # float64, a few terms
    conv = rng.standard_normal((3, 3, c, out))
    name, oihw = layout.to_torch(("conv", "kernel"), conv)
    assert oihw.shape == (out, c, 3, 3) and oihw[out - 1, c - 1, 2, 1] == conv[2, 1, c - 1, out - 1]
    assert np.array_equal(layout.from_torch(name, oihw, kernel=True), conv)


# ---------------------------------------------------------------------------- the CNN, end to end


def test_the_cnn_rows_pass_with_max_pool_choices(fmnist):
    """The built-in CNN pair's forward and gradient rows (``jaxnet parity --model cnn`` runs
    these, then the Adadelta steps; ``e12`` runs the same engine on a user's CNN port, in
    train mode too, with steps)."""
    x, y = fmnist.train.images[:32], fmnist.train.labels[:32]
    rows = parity.forward(to_float(x)[:, None], y, config=CNNConfig(), dtypes=("float32",))
    assert all(r.passed for r in rows), [(r.section, r.quantity, r.ratio) for r in rows if not r.passed]
    names = {r.quantity.split(":")[0] for r in rows}
    assert {"conv1", "relu2", "pool", "fc1", "log_softmax", "loss", "conv1.weight", "fc2.bias"} <= names
    assert "max-pool choice reading relu2" in names


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_the_cnn_trains_with_dropout_and_resumes_bit_for_bit(fmnist, tmp_path, name):
    """Dropout masks are a function of (seed, step): two epochs straight and one plus a resumed
    one give the same weights, in each backend. A narrow CNN (the example's layers, dropouts and
    Adadelta, 4 and 8 channels): what is proved is where the masks come from, not the size."""
    from types import SimpleNamespace

    from jaxnet import checkpoint
    from jaxnet.data import Split

    small = SimpleNamespace(
        train=fmnist.train, test=Split(fmnist.test.images[:500], fmnist.test.labels[:500])
    )
    config = CNNConfig(channels=(4, 8), hidden=16)
    cfg = TrainConfig(optimizer=replace(CNN_RECIPE, schedule="constant"), epochs=2, train_limit=128, seed=1)
    state = init_state_dict(config, 1)

    def trained(epochs: int, resume=None):
        backend = get_backend(name, config, seed=1, state=resume.model if resume else state)
        save = tmp_path / f"{epochs}-{resume is not None}"
        run.train(backend, small, replace(cfg, epochs=epochs), save=save, resume=resume, log=lambda _: None,
                  progress=False)  # fmt: skip
        return checkpoint.load(save)

    straight = trained(2)
    half = trained(1)
    resumed = trained(2, half)
    assert resumed.step == straight.step == 4
    assert straight.optimizer.keys() == resumed.optimizer.keys() and straight.optimizer  # Adadelta's buffers
    for key, value in {**straight.model, **straight.optimizer}.items():
        assert np.array_equal({**resumed.model, **resumed.optimizer}[key], value), key


def test_bad_input_is_a_jaxnet_error_not_a_traceback(batch):
    """An unknown loss, a kernel no layout rule covers, a partial CNN state dict."""
    from jaxnet.checkpoint import infer_config
    from jaxnet.errors import CheckpointError

    with pytest.raises(JaxnetError, match="loss must be one of"):
        parity.compare(TorchMLP(), blank(NNXMLP), *batch, loss="hinge")
    with pytest.raises(JaxnetError, match="no layout rule for a 5-D kernel"):
        Layout().to_torch(("conv3d", "kernel"), np.zeros((3, 3, 3, 1, 2)))
    partial = {
        "conv1.weight": np.zeros((32, 1, 3, 3), np.float32),
        "fc2.weight": np.zeros((10, 128), np.float32),
    }
    with pytest.raises(CheckpointError, match=r"conv2\.weight"):
        infer_config(partial)
