"""Integrate-and-fire neuron and the offset-spike calibration (COS).

Everything here works in threshold units: a layer's input is divided by its
threshold ``lam`` before it reaches the neuron, and a spike is worth one.

One time step: ``v = v + x_t``; spike ``s_t = (v >= 1)``; ``v = v - s_t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

V_INIT = 0.5
# Constants of the reference implementation (cos-method.md section 3).
FIRE_SENTINEL = 1000.0    # m_fire when a neuron never fired
QUIET_SENTINEL = -1000.0  # m_quiet when a neuron fired at every step
DOWN_MARGIN = 0.999
UP_MARGIN = 1.001


def if_neuron(x: jax.Array, v0: jax.Array | float = V_INIT) -> tuple[jax.Array, jax.Array]:
    """Runs IF neurons over time.

    Args:
      x: input currents ``[S, ...]`` in threshold units.
      v0: initial membrane potential, broadcastable to ``x[0]``.
    Returns:
      ``(spikes, v_final)``: spikes ``[S, ...]`` of 0/1 in ``x.dtype``, and the
      membrane potential after the last step, shaped like ``x[0]``.
    """
    v0 = jnp.broadcast_to(jnp.asarray(v0, x.dtype), x.shape[1:])

    def step(v, x_t):
        v = v + x_t
        s = (v >= 1).astype(x.dtype)
        return v - s, s

    v_final, spikes = lax.scan(step, v0, x)
    return spikes, v_final


def presimulate(x: jax.Array, v0: jax.Array) -> dict[str, jax.Array]:
    """The pre-simulation statistics of cos-method.md section 3, step 1.

    Args:
      x: the first rho inputs ``[rho, ...]`` in threshold units.
      v0: initial potential, broadcastable to ``x[0]``.
    Returns:
      ``n`` (spike count), ``m_fire`` (smallest pre-reset potential of a
      spiking step, else 1000), ``m_quiet`` (largest potential of a silent
      step, else -1000) and ``v`` (potential after the last step), each
      shaped like ``x[0]``.
    """
    shape, dtype = x.shape[1:], x.dtype
    init = (
        jnp.broadcast_to(jnp.asarray(v0, dtype), shape),
        jnp.zeros(shape, dtype),
        jnp.full(shape, FIRE_SENTINEL, dtype),
        jnp.full(shape, QUIET_SENTINEL, dtype),
    )

    def step(carry, x_t):
        v, n, m_fire, m_quiet = carry
        v = v + x_t
        fired = v >= 1
        m_fire = jnp.where(fired, jnp.minimum(m_fire, v), m_fire)
        m_quiet = jnp.where(fired, m_quiet, jnp.maximum(m_quiet, v))
        s = fired.astype(dtype)
        return (v - s, n + s, m_fire, m_quiet), None

    (v, n, m_fire, m_quiet), _ = lax.scan(step, init, x)
    return {"n": n, "m_fire": m_fire, "m_quiet": m_quiet, "v": v}


def shift_v0(v0: jax.Array, stats: dict[str, jax.Array]) -> jax.Array:
    """One round of the detection and shift rule (section 3, steps 2-4).

    Detection reads the residual relative to the start: ``r = v - (v0 - 1/2)``;
    ``r < 0`` after at least one spike means one spike too many, ``r >= 1``
    one too few. For v0 = 1/2 (the first round) this is the reference's rule.

    Args:
      v0: the initial potential the pre-simulation started from, ``[...]``.
      stats: the output of :func:`presimulate` for that ``v0``.
    Returns:
      The shifted initial potential, shaped like ``stats['v']``.
    """
    v, n = stats["v"], stats["n"]
    one = jnp.ones_like(v)
    v0 = jnp.broadcast_to(jnp.asarray(v0, v.dtype), v.shape)
    # The residual is read relative to the start: from v0 = 1/2 the neuron
    # fired the right number of spikes iff 0 <= v < 1. After earlier rounds
    # moved v0 by d = v0 - 1/2, the same test applies to v - d (for the first
    # round d = 0 and this is exactly the reference's rule).
    residual = v - (v0 - V_INIT)
    lower = (residual < 0) & (n > 0)   # one spike too many
    higher = residual >= 1             # one spike too few
    down = jnp.where(stats["m_fire"] - DOWN_MARGIN > 1, stats["m_fire"] - DOWN_MARGIN, one)
    up = jnp.where(UP_MARGIN - stats["m_quiet"] > 1, UP_MARGIN - stats["m_quiet"], one)
    return jnp.where(lower, v0 - down, jnp.where(higher, v0 + up, v0))


def calibrate_v0(x: jax.Array, rho: int, iterations: int = 1,
                 v0: jax.Array | float = V_INIT) -> jax.Array:
    """Calibrated initial membrane potentials (the COS shift rule).

    Per sample and per neuron: pre-simulate the first ``rho`` steps of ``x``
    from ``v0``, detect one spike too many (``v < 0`` after firing) or too
    few (``v >= 1``), and shift ``v0`` by the reference's distances. With
    ``iterations = k`` the round is repeated k times, each from the current
    ``v0`` (detection relative to that start, see :func:`shift_v0`), so an
    offset of two spikes takes two rounds; ``k = 1`` is the reference.

    Args:
      x: the layer's input sequence ``[S, ...]`` in threshold units, S >= rho.
      rho: pre-simulation length (static int >= 0); 0 returns ``v0``.
      iterations: rounds of calibration k (static int >= 1).
      v0: starting potential, broadcastable to ``x[0]`` (default 1/2).
    Returns:
      The calibrated initial potential ``[...]`` shaped like ``x[0]``.
    """
    rho, iterations = _check_calibration_args(x, rho, iterations)
    v0 = jnp.broadcast_to(jnp.asarray(v0, x.dtype), x.shape[1:])
    if rho == 0:
        return v0
    window = x[:rho]
    return lax.fori_loop(0, iterations, lambda _, v: shift_v0(v, presimulate(window, v)), v0)


def _check_calibration_args(x, rho, iterations) -> tuple[int, int]:
    if not isinstance(rho, int) or isinstance(rho, bool) or rho < 0:
        raise ValueError(f"rho (pre-simulation steps) must be an int >= 0, got {rho!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations (k) must be an int >= 1, got {iterations!r}")
    if x.ndim < 1 or rho > x.shape[0]:
        raise ValueError(f"rho={rho} exceeds the {x.shape[0] if x.ndim else 0} time steps of x")
    return rho, iterations
