"""Integrate-and-fire neuron and the offset-spike calibration (COS): the reference.

Everything here works in threshold units: a layer's input is divided by its
threshold ``lam`` before it reaches the neuron, and a spike is worth one.

One time step: ``v = v + x_t``; spike ``s_t = (v >= 1)``; ``v = v - s_t``
(reset by subtraction). Calibration (``docs/method.md``): pre-simulate the
first rho steps (:func:`presimulate`), detect one spike too many or too few
and shift v0 (:func:`shift_v0`), k rounds (:func:`calibrate_v0`).

These are the readable ``lax.scan`` forms, the specification of the
numbers. :mod:`cosjax._fused` holds unrolled forms of the same step
functions (bitwise the same results) that :func:`cosjax.simulate` runs where
they were measured to be faster; :func:`cosjax._fused.use_fused` says where.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cosjax.checks import check_int
from cosjax.surrogate import DEFAULT, Surrogate, spike

__all__ = [
    "DOWN_MARGIN", "FIRE_SENTINEL", "QUIET_SENTINEL", "UP_MARGIN", "V_INIT", "calibrate_v0",
    "check_rounds", "filled_like", "if_neuron", "if_step", "presim_init", "presim_step", "presimulate",
    "shift_v0"
]

V_INIT = 0.5
# Constants of the reference implementation (docs/method.md, calibration).
FIRE_SENTINEL = 1000.0    # m_fire when a neuron never fired
QUIET_SENTINEL = -1000.0  # m_quiet when a neuron fired at every step
DOWN_MARGIN = 0.999
UP_MARGIN = 1.001


def if_neuron(x: jax.Array, v0: jax.Array | float = V_INIT, *,
              surrogate: Surrogate = DEFAULT) -> tuple[jax.Array, jax.Array]:
    """Runs IF neurons over time.

    Args:
      x: input currents ``[S, ...]`` in threshold units.
      v0: initial membrane potential, broadcastable to ``x[0]``.
      surrogate: the spike function's derivative under ``jax.grad`` (see
        :mod:`cosjax.surrogate`); the forward values do not depend on it.
    Returns:
      ``(spikes, v_final)``: spikes ``[S, ...]`` of 0/1 in ``x.dtype``, and the
      membrane potential after the last step, shaped like ``x[0]``.
    """
    v0 = filled_like(v0, x[0])
    v_final, spikes = lax.scan(lambda v, x_t: if_step(v, x_t, surrogate), v0, x)
    return spikes, v_final


def if_step(v: jax.Array, x_t: jax.Array,
            surrogate: Surrogate = DEFAULT) -> tuple[jax.Array, jax.Array]:
    """One IF step: ``(v, x_t) -> (v after reset, spike)``."""
    v = v + x_t
    s = spike(v, surrogate)
    return v - s, s


def presimulate(x: jax.Array, v0: jax.Array) -> dict[str, jax.Array]:
    """The pre-simulation statistics (``docs/method.md``, calibration step 1).

    Args:
      x: the first rho inputs ``[rho, ...]`` in threshold units.
      v0: initial potential, broadcastable to ``x[0]``.
    Returns:
      ``n`` (spike count), ``m_fire`` (smallest pre-reset potential of a
      spiking step, else 1000), ``m_quiet`` (largest potential of a silent
      step, else -1000) and ``v`` (potential after the last step), each
      shaped like ``x[0]``.
    """
    (v, n, m_fire, m_quiet), _ = lax.scan(presim_step, presim_init(v0, x[0]), x)
    return {"n": n, "m_fire": m_fire, "m_quiet": m_quiet, "v": v}


def presim_init(v0, like: jax.Array) -> tuple[jax.Array, ...]:
    """The pre-simulation carry ``(v, n, m_fire, m_quiet)`` before step 1,
    each shaped like ``like`` (one step's input)."""
    return (filled_like(v0, like), filled_like(0, like), filled_like(FIRE_SENTINEL, like),
            filled_like(QUIET_SENTINEL, like))


def filled_like(value: jax.Array | float, like: jax.Array) -> jax.Array:
    """``value`` broadcast to the shape and dtype of ``like``, and varying
    over the same manual mesh axes (inside ``shard_map``), so that it can
    start a loop carry that ``like`` updates."""
    out = jnp.broadcast_to(jnp.asarray(value, like.dtype), like.shape)
    missing = tuple(sorted(_varying(like) - _varying(out)))
    return lax.pcast(out, missing, to="varying") if missing else out


def _varying(a: jax.Array) -> frozenset:
    """The manual mesh axes ``a`` varies over (empty outside ``shard_map``)."""
    axes = getattr(jax.typeof(a), "manual_axis_type", None)
    return frozenset(getattr(axes, "varying", ()))


def presim_step(carry: tuple[jax.Array, ...], x_t: jax.Array) -> tuple[tuple[jax.Array, ...], None]:
    """One pre-simulation step on the carry ``(v, n, m_fire, m_quiet)``."""
    v, n, m_fire, m_quiet = carry
    v = v + x_t
    fired = v >= 1
    m_fire = jnp.where(fired, jnp.minimum(m_fire, v), m_fire)
    m_quiet = jnp.where(fired, m_quiet, jnp.maximum(m_quiet, v))
    s = fired.astype(v.dtype)
    return (v - s, n + s, m_fire, m_quiet), None


def shift_v0(v0: jax.Array, stats: dict[str, jax.Array]) -> jax.Array:
    """One round of the detection and shift rule (``docs/method.md``, steps 2-4).

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
    check_rounds(rho, iterations)
    if x.ndim < 1 or rho > x.shape[0]:
        raise ValueError(f"rho={rho} exceeds the {x.shape[0] if x.ndim else 0} time steps of x")
    v0 = filled_like(v0, x[0])
    if rho == 0:
        return v0
    window = x[:rho]
    return lax.fori_loop(0, iterations, lambda _, v: shift_v0(v, presimulate(window, v)), v0)




def check_rounds(rho, iterations) -> None:
    """Raises ``ValueError`` unless rho is an int >= 0 and iterations an int >= 1."""
    check_int("rho (pre-simulation steps)", rho, 0)
    check_int("iterations (k)", iterations, 1)
