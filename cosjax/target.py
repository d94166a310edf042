"""The platform a computation is compiled for, as opposed to the host's.

cosjax picks some forms per platform: the unrolled (fused) IF neurons and the
im2col convolution on CPU (:mod:`cosjax._fused`, :func:`cosjax.layers.resolve_conv_impl`),
and the CPU compiler options (:mod:`cosjax.xla_options`). Those choices must
follow the devices the program will run on, not ``jax.default_backend()``:
a program compiled ahead of time on a CPU host for a TPU topology must hold
what it would hold on that TPU.

:func:`current` is the platform in force: the one set by :func:`use` (a
context, e.g. around an ahead-of-time ``trace``/``lower``), else the
platform of the concrete arrays :func:`cosjax.simulate` and
:func:`cosjax.run_snn` were given (:func:`platform_of`), else the default
backend. Choices are made at trace time, so enter :func:`use` before the
program is traced.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import jax

__all__ = ["current", "platform_of", "use"]

PLATFORMS = ("cpu", "gpu", "tpu")
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}

_platform: contextvars.ContextVar[str | None] = contextvars.ContextVar("cosjax_target_platform",
                                                                       default=None)


def _normalise(platform: str) -> str:
    name = _ALIASES.get(str(platform).lower(), str(platform).lower())
    if name not in PLATFORMS:
        raise ValueError(f"target platform must be one of {', '.join(PLATFORMS)} (or cuda, "
                         f"rocm), got {platform!r}")
    return name


def current() -> str:
    """The platform cosjax compiles for now: ``"cpu"``, ``"gpu"`` or ``"tpu"``."""
    return _platform.get() or _normalise(jax.default_backend())


@contextlib.contextmanager
def use(platform: str | None) -> Iterator[str]:
    """Within the block, cosjax compiles for ``platform`` (None: no change)."""
    if platform is None:
        yield current()
        return
    token = _platform.set(_normalise(platform))
    try:
        yield current()
    finally:
        _platform.reset(token)


def platform_of(*trees: Any) -> str | None:
    """The platform of the first concrete ``jax.Array`` placed on devices in
    ``trees`` (None when there is none: tracers, NumPy arrays, shapes)."""
    for leaf in jax.tree_util.tree_leaves(trees):
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer):
            try:
                devices = leaf.devices()
            except Exception:  # deleted or abstract arrays have no devices
                continue
            if devices:
                return _normalise(next(iter(devices)).platform)
    return None
