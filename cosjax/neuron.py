"""Integrate-and-fire neuron and the offset-spike calibration (COS).

Everything here works in threshold units: a layer's input is divided by its
threshold ``lam`` before it reaches the neuron, and a spike is worth one.

One time step: ``v = v + x_t``; spike ``s_t = (v >= 1)``; ``v = v - s_t``.
"""

from __future__ import annotations

from typing import Callable, Sequence

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
    v_final, spikes = lax.scan(_if_step, v0, x)
    return spikes, v_final


def _if_step(v: jax.Array, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One IF step: ``(v, x_t) -> (v after reset, spike)``."""
    v = v + x_t
    s = (v >= 1).astype(v.dtype)
    return v - s, s


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
    (v, n, m_fire, m_quiet), _ = lax.scan(_presim_step, _presim_init(v0, x.shape[1:], x.dtype), x)
    return {"n": n, "m_fire": m_fire, "m_quiet": m_quiet, "v": v}


def _presim_init(v0, shape, dtype) -> tuple[jax.Array, ...]:
    """The pre-simulation carry ``(v, n, m_fire, m_quiet)`` before step 1."""
    return (jnp.broadcast_to(jnp.asarray(v0, dtype), shape), jnp.zeros(shape, dtype),
            jnp.full(shape, FIRE_SENTINEL, dtype), jnp.full(shape, QUIET_SENTINEL, dtype))


def _presim_step(carry: tuple[jax.Array, ...], x_t: jax.Array) -> tuple[tuple[jax.Array, ...], None]:
    """One pre-simulation step on the carry ``(v, n, m_fire, m_quiet)``."""
    v, n, m_fire, m_quiet = carry
    v = v + x_t
    fired = v >= 1
    m_fire = jnp.where(fired, jnp.minimum(m_fire, v), m_fire)
    m_quiet = jnp.where(fired, m_quiet, jnp.maximum(m_quiet, v))
    s = fired.astype(v.dtype)
    return (v - s, n + s, m_fire, m_quiet), None


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


# ---------------------------------------------------------------------------
# Unrolled forms for simulation. The functions above scan over a time axis;
# the ones below unroll the time loop over Python lists of steps. They do the
# same arithmetic in the same order (the same step functions), so results are
# bitwise identical, but XLA fuses an unrolled loop into one elementwise
# kernel per layer: no while loop, no per-step carry copies, and no
# ``[S, ...]`` input buffer when every step sees the same array. Measured on
# CPU this is several times faster for the S <= 32 steps used in practice.

UNROLL_MAX_STEPS = 32
"""Longest run :func:`cosjax.simulate` unrolls (longer runs use lax.scan;
``run_snn(..., unroll=False)`` always scans)."""

BLOCK_STEPS = 4
"""Steps per fused kernel in :func:`if_neuron_blocks`.

In one fused kernel every output step recomputes the potential from the
kernel's first step (about c/2 updates per output element for c steps), so
longer runs are cut into blocks whose final potential is stored."""


def opaque_one(like: jax.Array) -> jax.Array:
    """The int32 scalar 1, computed from ``like`` at run time.

    Used as a ``lax.fori_loop`` trip count that XLA cannot read at compile
    time: such a loop is kept, and its output is computed once into a buffer.
    A loop with a known trip count of 1 is inlined, and XLA on CPU fuses its
    body into every consumer (recomputing it per output element);
    ``lax.optimization_barrier`` does not prevent that on CPU.
    """
    nan = jnp.isnan(jnp.asarray(like).ravel()[0]).astype(jnp.int32)
    return jnp.minimum(nan + 1, 1)


def presimulate_steps(xs: Sequence[jax.Array], v0: jax.Array | float) -> dict[str, jax.Array]:
    """:func:`presimulate` on a list of steps ``xs[t]`` (unrolled).

    Args:
      xs: rho arrays, each ``[...]`` in threshold units.
      v0: initial potential, broadcastable to ``xs[0]``.
    Returns:
      ``n``, ``m_fire``, ``m_quiet`` and ``v``, each shaped like ``xs[0]``.
    """
    carry = _presim_init(v0, xs[0].shape, xs[0].dtype)
    for x_t in xs:
        carry, _ = _presim_step(carry, x_t)
    v, n, m_fire, m_quiet = carry
    return {"n": n, "m_fire": m_fire, "m_quiet": m_quiet, "v": v}


def calibrate_steps(x_at: Callable[[int], jax.Array], rho: int, iterations: int = 1,
                    v0: jax.Array | float = V_INIT, *,
                    rounds: jax.Array | None = None) -> jax.Array:
    """:func:`calibrate_v0` with the pre-simulation unrolled (bitwise identical).

    The rounds run in a ``lax.fori_loop``; with ``rounds`` a run-time value
    XLA cannot remove the loop, so the calibrated potential is computed once
    into a buffer instead of being recomputed inside every consumer's fused
    kernel (XLA on CPU drops ``lax.optimization_barrier`` before fusing).

    Args:
      x_at: ``t -> [...]``, the input of step t in threshold units, for
        ``t < rho``; ``t`` may be a traced int32 scalar (called inside the
        loop body, so that slicing and scaling fuse there).
      rho: pre-simulation length (static int >= 0); 0 returns ``v0``.
      iterations: rounds of calibration k (static int >= 1).
      v0: starting potential, broadcastable to ``x_at(0)``.
      rounds: optional int32 scalar equal to ``iterations`` but computed
        at run time (e.g. ``iterations * opaque_one(lam)``); None uses
        ``iterations`` itself.
    Returns:
      The calibrated initial potential shaped like ``x_at(0)``.
    """
    _check_rounds(rho, iterations)
    step = jax.eval_shape(lambda: x_at(0))
    v = jnp.broadcast_to(jnp.asarray(v0, step.dtype), step.shape)
    if rho == 0:
        return v

    def one_round(i, v):
        # With one round, i is 0 but unknown to XLA: indexing with it keeps
        # the step slices inside the loop's kernel instead of hoisting them
        # out of the loop into stored copies. With k rounds the hoisted
        # copies are reused k times.
        offset = i if iterations == 1 else 0
        return shift_v0(v, presimulate_steps([x_at(offset + t) for t in range(rho)], v))

    return lax.fori_loop(0, iterations if rounds is None else rounds, one_round, v)


def if_neuron_steps(xs: Sequence[jax.Array],
                    v0: jax.Array | float = V_INIT) -> tuple[list[jax.Array], jax.Array]:
    """:func:`if_neuron` on a list of steps (unrolled; bitwise identical).

    Args:
      xs: S arrays ``[...]`` in threshold units (the same array may repeat).
      v0: initial potential, broadcastable to ``xs[0]``.
    Returns:
      ``(spikes, v_final)``: a list of S spike arrays (0/1 in the input
      dtype) and the final potential, each shaped like ``xs[0]``.
    """
    v = jnp.broadcast_to(jnp.asarray(v0, xs[0].dtype), xs[0].shape)
    spikes = []
    for x_t in xs:
        v, s = _if_step(v, x_t)
        spikes.append(s)
    return spikes, v


def if_neuron_blocks(x_at: Callable[[int], jax.Array], steps: int,
                     v0: jax.Array | float = V_INIT, *, block: int = BLOCK_STEPS,
                     one: jax.Array | None = None) -> list[jax.Array]:
    """:func:`if_neuron_steps` over ``steps`` steps in blocks (bitwise identical).

    Args:
      x_at: ``t -> [...]``, the input of step t in threshold units; ``t``
        may be a traced int32 scalar.
      steps: S (static).
      v0: initial potential, broadcastable to ``x_at(0)``.
      block: steps per block (see :data:`BLOCK_STEPS`).
      one: optional :func:`opaque_one`; when given, the potential at the end
        of every block but the last is computed in a loop of that trip count
        and so stored, not recomputed by the next block's kernel.
    Returns:
      The S spike arrays, each shaped like ``x_at(0)``.
    """
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an int >= 1, got {block!r}")
    spikes: list[jax.Array] = []
    v = v0
    for start in range(0, steps, block):
        xs = [x_at(t) for t in range(start, min(steps, start + block))]
        block_spikes, v_end = if_neuron_steps(xs, v)
        spikes += block_spikes
        if start + block < steps and one is not None:
            # i is 0 at run time; indexing with it keeps the slices in the
            # loop's kernel (see calibrate_steps).
            def advance(i, v, start=start, stop=min(steps, start + block)):
                return if_neuron_steps([x_at(i + t) for t in range(start, stop)], v)[1]

            v_end = lax.fori_loop(0, one, advance,
                                  jnp.broadcast_to(jnp.asarray(v, xs[0].dtype), xs[0].shape))
        v = v_end
    return spikes


def _check_rounds(rho, iterations) -> None:
    """Raises ``ValueError`` unless rho is an int >= 0 and iterations an int >= 1."""
    if not isinstance(rho, int) or isinstance(rho, bool) or rho < 0:
        raise ValueError(f"rho (pre-simulation steps) must be an int >= 0, got {rho!r}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
        raise ValueError(f"iterations (k) must be an int >= 1, got {iterations!r}")


def _check_calibration_args(x, rho, iterations) -> tuple[int, int]:
    _check_rounds(rho, iterations)
    if x.ndim < 1 or rho > x.shape[0]:
        raise ValueError(f"rho={rho} exceeds the {x.shape[0] if x.ndim else 0} time steps of x")
    return rho, iterations
