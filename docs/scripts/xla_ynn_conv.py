"""XLA:CPU's YNNPACK convolutions against its Eigen ones: each ResNet layer and the whole step.

jaxlib 0.10 hands convolutions to YNNPACK by default (the "individual_convolution" library
fusion); ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` gives them back to
Eigen. This times, in child processes alternated ``--rounds`` times (the flags are read once per
process), forward + both gradients of each convolution of the ResNet (batch 128, NHWC, float32,
torch's padding) and the ResNet's whole SGD train step, under each setting; medians of 9 calls
per process, then the median over rounds::

    python docs/scripts/xla_ynn_conv.py > docs/xla-ynn-conv-cpu.md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "ynn (XLA's default)": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "eigen (jaxnet's)": "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
}
# (C_in, C_out, size, kernel, stride): the ResNet's convolutions (jaxnet.families.ResNetConfig)
LAYERS = [(1, 16, 28, 3, 1), (16, 16, 28, 3, 1), (16, 32, 28, 3, 2), (16, 32, 28, 1, 2),
          (32, 32, 14, 3, 1), (32, 64, 14, 3, 2), (32, 64, 14, 1, 2), (64, 64, 7, 3, 1)]  # fmt: skip
BATCH = 128


def _median_ms(fn, *args) -> float:
    import jax

    from jaxnet.bench.limits import call_times

    return 1e3 * statistics.median(call_times(lambda: jax.block_until_ready(fn(*args)), 9))


def child() -> dict[str, float]:
    """One process: every layer's forward + both gradients, and the ResNet's train step."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jaxnet.models.resnet import ResNet

    rng = np.random.default_rng(0)
    out = {}
    for cin, cout, size, k, s in LAYERS:
        pad = ((k // 2, k // 2),) * 2

        @jax.jit
        def step(x, w, g, s=s, pad=pad):
            conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
                x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            y, back = jax.vjp(conv, x, w)
            return y, back(g)  # the output and both gradients, all used

        x = jnp.asarray(rng.standard_normal((BATCH, size, size, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.1)
        o = (size + 2 * (k // 2) - k) // s + 1
        g = jnp.asarray(rng.standard_normal((BATCH, o, o, cout), np.float32))
        out[f"conv {cin}->{cout} {size}x{size} k{k} s{s}"] = _median_ms(step, x, w, g)

    model = ResNet(rngs=nnx.Rngs(0))
    model.train()
    opt = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9, nesterov=True), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()  # noqa: E731
        value, grads = nnx.value_and_grad(loss)(model)
        opt.update(model, grads)
        return value

    x = jnp.asarray(rng.standard_normal((BATCH, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, BATCH))
    out["resnet train step"] = _median_ms(train_step, model, opt, x, y)
    return out


def main(rounds: int = 3) -> None:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for _ in range(rounds):
        for name, flag in SETTINGS.items():
            env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
            done = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True,
                                  text=True, check=True)  # fmt: skip
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    import jax

    names = list(SETTINGS)
    print(f"jax {jax.__version__}, {os.cpu_count()} cores; ms, median over {rounds} alternated processes")
    print(f"| kernel (forward + both gradients, batch {BATCH}) | " + " | ".join(names) + " | ratio |")
    print("|---|" + "---|" * (len(names) + 1))
    for key in runs[names[0]][0]:
        ms = [statistics.median(r[key] for r in runs[n]) for n in names]
        print(f"| {key} | " + " | ".join(f"{m:.1f}" for m in ms) + f" | {ms[0] / ms[1]:.2f} |")


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(child()))
    else:
        main(int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 3)
