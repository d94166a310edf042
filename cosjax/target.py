"""The platform a computation is compiled for, as opposed to the host's.

cosjax picks some forms per platform: the unrolled (fused) IF neurons and the
im2col convolution on CPU (:mod:`cosjax._fused`, :func:`cosjax.layers.resolve_conv_impl`),
and the CPU compiler options (:mod:`cosjax.xla_options`). Those choices must
follow the devices the program will run on, not ``jax.default_backend()``:
a program compiled ahead of time on a CPU host for a TPU or GPU topology must
hold what it would hold on that TPU or GPU.

The forms are chosen when the program is *lowered*, for the platform lowered
for (:func:`on_platform`, built on ``jax.lax.platform_dependent``): both are
traced, and lowering keeps one. So a user's own ``jax.jit`` of
:func:`cosjax.simulate` or of a model, lowered on this CPU host with
``lowering_platforms=("tpu",)`` or ``("cuda",)``, holds the accelerator's
forms with nothing else to do, and a CPU program holds the CPU's.

:func:`use` (a context) fixes the platform at trace time instead; then only
the chosen form is traced. :func:`cosjax.simulate` enters it for the platform
of the concrete arrays it was given (:func:`platform_of`). It is still needed
for the one choice that cannot wait for lowering: the compiler options that
cosjax's own ``jax.jit`` calls are created with (:func:`cosjax.xla_options.jit`
reads :func:`current` when the jit is made). Wrap the building of cosjax's
jitted steps in ``use(platform)`` when they are compiled for another
platform (``benchmarks.aot`` does).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax import lax

__all__ = ["current", "forced", "on_platform", "platform_of", "use"]

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


def forced() -> str | None:
    """The platform set by :func:`use` (``"cpu"``, ``"gpu"`` or ``"tpu"``), or None."""
    return _platform.get()


def current() -> str:
    """The platform set by :func:`use`, else the default backend's: ``"cpu"``,
    ``"gpu"`` or ``"tpu"`` (what the compiler options are chosen for)."""
    return _platform.get() or _normalise(jax.default_backend())


def on_platform(args: tuple, *, cpu: Callable, other: Callable) -> Any:
    """``cpu(*args)`` in a program for the CPU, ``other(*args)`` for any other platform.

    Under :func:`use` the platform in force decides, and only that branch is
    traced. Otherwise both are traced into ``jax.lax.platform_dependent``,
    which keeps one when the program is lowered, for the platform lowered for
    (called outside any jit, it runs the default backend's branch). The two
    must return the same shapes and dtypes.
    """
    platform = _platform.get()
    if platform is not None:
        return (cpu if platform == "cpu" else other)(*args)
    return lax.platform_dependent(*args, cpu=cpu, default=other)


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
