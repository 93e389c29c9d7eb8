"""The oldest jax, flax, optax and torch jaxnet runs on, checked where a run starts.

pyproject.toml declares the same floors (a test holds the two equal). They are the versions the
suite is tested with, not older: the APIs the code calls set lower bounds (``jax.enable_x64``
as a context manager: jax 0.8; ``nnx.capture(..., method_outputs=...)``: flax 0.12.6, which
needs jax 0.8.1; ``optax.tree.update_moment``: optax 0.2.5), but nothing runs the suite on
those, and parity depends on each framework's arithmetic, not only on its API. So:

- jax, flax, optax: the pins of ``constraints.txt`` (the CPU suite: jax 0.10.2, flax 0.12.8,
  optax 0.2.8; jax pins its own jaxlib);
- torch: 2.11, what the GPU machines run the suite with (the CPU suite: 2.13).

Checked from the installed distributions' metadata (no framework is imported), so an old
version is one line naming what is needed, not an ``AttributeError`` deep in a run.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata

from jaxnet.errors import JaxnetError

FLOORS = {"jax": "0.10.2", "flax": "0.12.8", "optax": "0.2.8", "torch": "2.11"}
OPTIONAL = ("torch",)  # the reference backend and the harness: checked only where installed


def parse(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``,
    ``"0.12.8rc1"`` -> ``(0, 12, 8)`` (a pre-release counts as its release)."""
    numbers = re.match(r"\d+(\.\d+)*", version.strip())
    if numbers is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(n) for n in numbers.group(0).split("."))


def too_old(installed: dict[str, str | None]) -> list[str]:
    """``"<name> <version> (needs >= <floor>)"`` for each installed package below its floor.

    Args:
        installed: ``{name: version}``; ``None`` for a package that is not installed.
    """
    found = []
    for name, floor in FLOORS.items():
        version = installed.get(name)
        if version is not None and parse(version) < parse(floor):
            found.append(f"{name} {version} (needs >= {floor})")
    return found


def installed() -> dict[str, str | None]:
    """The installed version of each package of :data:`FLOORS`, ``None`` where absent."""
    versions: dict[str, str | None] = {}
    for name in FLOORS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def check() -> None:
    """Raise if an installed jax, flax, optax or torch is older than jaxnet needs.

    Raises:
        JaxnetError: ``jax 0.5.0 (needs >= 0.10.2); upgrade: pip install -c constraints.txt -e '.[torch]'``.
    """
    old = too_old(installed())
    if old:
        raise JaxnetError(
            f"{'; '.join(old)}: upgrade with pip install -c constraints.txt -e '.[torch]' "
            "(or make, which does)"
        )
