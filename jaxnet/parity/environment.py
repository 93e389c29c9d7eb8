"""The arithmetic a parity run happens in: matmul precision switched and restored, and recorded.

The only module besides the engine that imports both frameworks, and only when called.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from jaxnet.numerics import unit_roundoff


@dataclass(frozen=True)
class Arithmetic:
    """The float32 matmul arithmetic each side uses: ``"highest"`` (IEEE float32), ``"tf32"``
    or ``"bfloat16"``."""

    jax: str
    torch: str

    @property
    def coarsest(self) -> str:
        """The one with the larger unit roundoff: the floors scale to it."""
        return max((self.jax, self.torch), key=lambda m: unit_roundoff("float32", m))


@contextlib.contextmanager
def matmul_precision(precision: str, device: str) -> Iterator[Arithmetic]:
    """``"highest"``: full float32 matmuls in both frameworks for the block, restored after.
    ``"default"``: each framework's own default, left as it is; yields what is in force."""
    import jax

    from jaxnet.backends.torch import matmul_precision as torch_precision

    if precision == "highest":
        with jax.default_matmul_precision("highest"), torch_precision("highest"):
            yield Arithmetic("highest", "highest")
        return
    yield in_force(device)


def in_force(device: str) -> Arithmetic:
    """What each framework's float32 matmuls use right now on ``device``.

    JAX on a GPU: ``highest``/``float32`` is IEEE float32, ``bfloat16`` one bf16 pass, and
    anything else (the default included) TF32 on recent NVIDIA parts. torch on CUDA:
    ``set_float32_matmul_precision`` ``highest`` (unless ``allow_tf32``), ``high`` TF32,
    ``medium`` bfloat16. CPUs compute float32 matmuls in float32.
    """
    import jax
    import torch

    jax_gpu = jax.devices()[0].platform == "gpu" if device == "auto" else device == "cuda"
    setting = str(jax.config.jax_default_matmul_precision).lower()
    jax_mode = "highest"
    if jax_gpu and setting not in ("highest", "float32"):
        jax_mode = "bfloat16" if setting == "bfloat16" else "tf32"
    torch_mode = "highest"
    if torch.cuda.is_available() and device != "cpu":
        precision = torch.get_float32_matmul_precision()
        if precision == "medium":
            torch_mode = "bfloat16"
        elif precision == "high" or torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
            torch_mode = "tf32"  # cuDNN's convolutions in TF32 (its default) count too
    return Arithmetic(jax_mode, torch_mode)


def describe(jax_side, torch_side, arithmetic: Arithmetic) -> dict[str, str]:
    """Devices, versions and the precision settings read at run time."""
    import flax
    import jax
    import jaxlib
    import optax
    import torch

    return {
        "python": platform.python_version(),
        "machine": f"{platform.platform()} ({platform.processor() or platform.machine()})",
        "jax": f"{jax.__version__} (jaxlib {jaxlib.__version__}), flax {flax.__version__}, optax {optax.__version__}",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "jax device": jax_side.describe(),
        "torch device": torch_side.describe(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_enable_x64 (process)": str(bool(jax.config.jax_enable_x64)),
        "torch float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch cuda.matmul.allow_tf32 / cudnn.allow_tf32": (
            f"{torch.backends.cuda.matmul.allow_tf32} / {torch.backends.cudnn.allow_tf32}"
        ),
        "float32 matmul arithmetic in force": f"jax {arithmetic.jax}, torch {arithmetic.torch}",
    }


@contextlib.contextmanager
def jax_matmul_precision(precision: str, device: str, recorded: dict) -> Iterator[Arithmetic]:
    """:func:`matmul_precision` for JAX alone; torch's arithmetic is the one the recorded
    reference was made in (a recorded check runs without torch)."""
    import jax

    torch_mode = recorded.get("torch arithmetic", "highest")
    if precision == "highest":
        with jax.default_matmul_precision("highest"):
            yield Arithmetic("highest", torch_mode)
        return
    yield Arithmetic(in_force_jax(device), torch_mode)


def in_force_jax(device: str) -> str:
    """JAX's half of :func:`in_force`."""
    import jax

    jax_gpu = jax.devices()[0].platform == "gpu" if device == "auto" else device == "cuda"
    setting = str(jax.config.jax_default_matmul_precision).lower()
    if jax_gpu and setting not in ("highest", "float32"):
        return "bfloat16" if setting == "bfloat16" else "tf32"
    return "highest"


def machine() -> dict[str, str]:
    """The CPU model and thread counts: what makes two machines round differently."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version()}


def describe_recorded(jax_side, recorded: dict, arithmetic: Arithmetic) -> dict[str, str]:
    """The environment of a recorded check: this machine's JAX side, the bundle's torch side,
    and whether the two machines differ (the floors are the bundle machine's)."""
    import flax
    import jax
    import optax

    here = machine()
    there = recorded.get("machine", {})
    env = {
        "python": here["python"],
        "machine": f"{platform.platform()} ({here['cpu']}, {here['cores']} cores)",
        "jax": f"{jax.__version__}, flax {flax.__version__}, optax {optax.__version__}",
        "jax device": jax_side.describe(),
        "torch device (recorded)": recorded.get("torch device", "?"),
        "recorded on": f"{there.get('cpu', '?')}, {there.get('cores', '?')} cores, {recorded.get('when', '?')}",
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "float32 matmul arithmetic in force": f"jax {arithmetic.jax}, torch {arithmetic.torch} (recorded)",
    }
    differ = [k for k in ("cpu", "cores") if there.get(k) != here[k]]
    if differ:
        env["machines differ"] = (
            f"{', '.join(differ)}: checked on {here['cpu']} ({here['cores']} cores); the floors are those "
            "measured where the reference was recorded"
        )
    return env
