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

The other neurons of :mod:`cosjax.methods` make threshold decisions too
(a group member at ``v >= i/m``, a signed neuron's -1 at ``v < 0``, a
parallel neuron's step t at ``T * mean + v0 >= t``). :func:`decision` gives
each the same surrogate: its forward value is the exact decision, its
derivative ``surrogate.derivative(p)`` with ``p`` the potential measured so
that the decision is the crossing of ``p = 1`` (``p = v - i/m + 1`` for a
group member, ``1 - v`` for the -1, ``T * mean + v0 - t + 1`` for step t).

A ``Surrogate`` is a frozen dataclass: hashable, so it can be a static
argument of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

__all__ = [
    "DEFAULT", "KINDS", "Surrogate", "check_surrogate", "decision", "sigmoid", "spike",
    "straight_through", "triangle"
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


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def decision(fired: jax.Array, potential: jax.Array, surrogate: Surrogate = DEFAULT) -> jax.Array:
    """A threshold decision with a surrogate derivative.

    Args:
      fired: the decision, 0/1 in a float dtype, computed exactly by the caller.
      potential: ``p``, shaped like ``fired``: the decision stands for
        ``p >= 1`` (in threshold units), and its derivative is
        ``surrogate.derivative(p) * dp``.
      surrogate: the derivative's shape.
    Returns:
      ``fired`` unchanged (the forward value never depends on ``potential``).
    """
    del potential
    return fired


@decision.defjvp
def _decision_jvp(surrogate, primals, tangents):
    (fired, potential), (_, dp) = primals, tangents
    return fired, (surrogate.derivative(potential) * dp).astype(fired.dtype)
