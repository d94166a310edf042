"""The spike function with a selectable surrogate gradient.

Forward, a spike is ``s = (v >= 1)`` in the potential's dtype (threshold
units), exactly as in the IF neuron of ``docs/method.md``. Its true derivative
is zero almost everywhere, so ``jax.grad`` through a spiking layer would stop
there. A :class:`Surrogate` replaces that derivative in the backward (and
forward-mode) pass only; the forward values never change:

* :func:`straight_through`: ``ds/dv = 1``. With reset by subtraction
  (``v <- v - s``) the potential carried to the next step then has
  derivative ``1 - 1 = 0``, so each step's spike answers to its own input:
  for a constant input x over T steps, ``d(spike count)/dx = T``, the
  derivative of the count's rate approximation ``T * x``.
* :func:`triangle` (the default of :func:`cosjax.simulate`): ``ds/dv =
  max(0, 1 - |v - 1| / w) / w``, non-zero only within ``w`` of the threshold
  (area one).
* :func:`sigmoid`: ``ds/dv = sigma'((v - 1) / w) / w``, the derivative of a
  logistic step of width ``w`` (area one).

A ``Surrogate`` is a frozen dataclass: hashable, so it can be a static
argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

__all__ = [
    "DEFAULT", "KINDS", "Surrogate", "check_surrogate", "sigmoid", "spike", "straight_through",
    "triangle"
]

KINDS = ("straight_through", "triangle", "sigmoid")


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A surrogate derivative of the spike function ``v >= 1``.

    Attributes:
      kind: one of :data:`KINDS`.
      width: w > 0, the width of the triangle or sigmoid around the
        threshold (ignored by ``straight_through``).
    """

    kind: str = "triangle"
    width: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"surrogate kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.width, (int, float)) or isinstance(self.width, bool) \
                or not self.width > 0:
            raise ValueError(f"surrogate width must be a number > 0, got {self.width!r}")

    def derivative(self, v: jax.Array) -> jax.Array:
        """``ds/dv`` at potentials ``v`` (threshold units), shaped like ``v``."""
        if self.kind == "straight_through":
            return jnp.ones_like(v)
        w = jnp.asarray(self.width, v.dtype)
        if self.kind == "triangle":
            return jnp.maximum(0, 1 - jnp.abs(v - 1) / w) / w
        s = jax.nn.sigmoid((v - 1) / w)
        return s * (1 - s) / w


def straight_through() -> Surrogate:
    """``ds/dv = 1`` everywhere."""
    return Surrogate("straight_through")


def triangle(width: float = 1.0) -> Surrogate:
    """``ds/dv = max(0, 1 - |v - 1| / width) / width``."""
    return Surrogate("triangle", width)


def sigmoid(width: float = 0.25) -> Surrogate:
    """``ds/dv`` of ``sigmoid((v - 1) / width)``."""
    return Surrogate("sigmoid", width)


DEFAULT = triangle(1.0)
"""The surrogate :func:`cosjax.simulate` and :func:`cosjax.if_neuron` use by default."""


def check_surrogate(surrogate) -> Surrogate:
    """Returns ``surrogate`` or raises ``ValueError`` unless it is a :class:`Surrogate`."""
    if not isinstance(surrogate, Surrogate):
        raise ValueError("surrogate must be a cosjax.surrogate.Surrogate (e.g. "
                         f"cosjax.surrogate.triangle()), got {surrogate!r}")
    return surrogate


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(v: jax.Array, surrogate: Surrogate = DEFAULT) -> jax.Array:
    """``(v >= 1)`` as 0/1 in ``v.dtype``; derivative given by ``surrogate``."""
    return (v >= 1).astype(v.dtype)


@spike.defjvp
def _spike_jvp(surrogate, primals, tangents):
    (v,), (dv,) = primals, tangents
    return spike(v, surrogate), surrogate.derivative(v) * dv
