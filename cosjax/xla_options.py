"""XLA compiler options for the functions cosjax compiles.

On the CPU backend, jaxlib 0.10 hands convolutions to YNNPACK by default.
For the shapes of CIFAR networks that is much slower than XLA's own
(Eigen) convolution, for the kernel gradient most of all (figures in
docs/performance.md). :func:`compiler_options` therefore keeps YNNPACK for dots and reductions
(where it is the faster library) and leaves convolutions to XLA. GPUs and
TPUs get no options.

Every ``jax.jit`` that cosjax creates goes through :func:`jit`. Research code
that jits cosjax models itself gets the same CPU speed with::

    jax.jit(fn, compiler_options=cosjax.xla_options.compiler_options())

If ``XLA_FLAGS`` already sets the option, the user's choice stands and no
option is passed. If the installed jaxlib does not know the option (older or
newer versions), none is passed either: the result is the same computation,
only the speed differs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cosjax import target

__all__ = ["CPU_YNN_FUSIONS", "YNN_FUSION_OPTION", "compiler_options", "jit"]

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
"""The XLA debug option that lists the operations XLA:CPU gives to YNNPACK."""

CPU_YNN_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
"""Its value on CPU: dots and reductions, not convolutions."""


def compiler_options(backend: str | None = None) -> dict[str, str]:
    """The compiler options cosjax compiles with on ``backend``.

    Args:
      backend: the platform compiled for; default :func:`cosjax.target.current`.
    Returns:
      ``{YNN_FUSION_OPTION: CPU_YNN_FUSIONS}`` on CPU when this jaxlib accepts
      it and ``XLA_FLAGS`` does not set it; otherwise ``{}``.
    """
    backend = target.current() if backend is None else backend
    if backend != "cpu" or YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {YNN_FUSION_OPTION: CPU_YNN_FUSIONS} if _cpu_option_accepted() else {}


@functools.cache
def _cpu_option_accepted() -> bool:
    """Whether this jaxlib compiles with the CPU option (checked once per process)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={YNN_FUSION_OPTION: CPU_YNN_FUSIONS}).lower(
            jnp.zeros((2,), jnp.float32)).compile()
    except Exception:  # an unknown option or enum value: jaxlib's own error type varies
        return False
    return True


def jit(fun: Callable, *, platform: str | None = None, **kwargs: Any) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with the :func:`compiler_options`
    of ``platform`` (default :func:`cosjax.target.current` when called)."""
    return jax.jit(fun, compiler_options=compiler_options(platform) or None, **kwargs)
