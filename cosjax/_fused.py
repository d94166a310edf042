"""Unrolled ("fused") forms of the IF neuron and calibration: a CPU speed-up.

The functions of :mod:`cosjax.neuron` scan over a time axis; the ones here
unroll the time loop over Python lists of steps. They apply the same step
functions (:func:`cosjax.neuron.if_step`, :func:`cosjax.neuron.presim_step`,
:func:`cosjax.neuron.shift_v0`) in the same order, so spikes and potentials
are bitwise those of the scan forms, but XLA fuses an unrolled loop into one
elementwise kernel per layer: no while loop, no per-step carry copies, and
no ``[S, ...]`` input buffer when every step sees the same array. Measured
on CPU this is several times faster for the S <= 32 steps used in practice.

:func:`use_fused` is the one place that decides where these forms run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cosjax.checks import check_int
from cosjax.neuron import (
    V_INIT,
    check_rounds,
    filled_like,
    if_step,
    presim_init,
    presim_step,
    shift_v0,
)
from cosjax.surrogate import DEFAULT, Surrogate

UNROLL_MAX_STEPS = 32
"""Longest run :func:`use_fused` unrolls (longer runs use lax.scan)."""

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
    """:func:`cosjax.neuron.presimulate` on a list of steps ``xs[t]`` (unrolled).

    Args:
      xs: rho arrays, each ``[...]`` in threshold units.
      v0: initial potential, broadcastable to ``xs[0]``.
    Returns:
      ``n``, ``m_fire``, ``m_quiet`` and ``v``, each shaped like ``xs[0]``.
    """
    carry = presim_init(v0, xs[0])
    for x_t in xs:
        carry, _ = presim_step(carry, x_t)
    v, n, m_fire, m_quiet = carry
    return {"n": n, "m_fire": m_fire, "m_quiet": m_quiet, "v": v}


def calibrate_steps(x_at: Callable[[int], jax.Array], rho: int, iterations: int = 1,
                    v0: jax.Array | float = V_INIT, *,
                    rounds: jax.Array | None = None) -> jax.Array:
    """:func:`cosjax.neuron.calibrate_v0` with the pre-simulation unrolled (bitwise identical).

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
    check_rounds(rho, iterations)
    v = filled_like(v0, x_at(0))   # x_at(0) is dead code after this: only its type is read
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


def if_neuron_steps(xs: Sequence[jax.Array], v0: jax.Array | float = V_INIT,
                    surrogate: Surrogate = DEFAULT) -> tuple[list[jax.Array], jax.Array]:
    """:func:`cosjax.neuron.if_neuron` on a list of steps (unrolled; bitwise identical).

    Args:
      xs: S arrays ``[...]`` in threshold units (the same array may repeat).
      v0: initial potential, broadcastable to ``xs[0]``.
    Returns:
      ``(spikes, v_final)``: a list of S spike arrays (0/1 in the input
      dtype) and the final potential, each shaped like ``xs[0]``.
    """
    v = filled_like(v0, xs[0])
    spikes = []
    for x_t in xs:
        v, s = if_step(v, x_t, surrogate)
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
    check_int("block", block, 1)
    spikes: list[jax.Array] = []
    v = v0
    for start in range(0, steps, block):
        xs = [x_at(t) for t in range(start, min(steps, start + block))]
        block_spikes, v_end = if_neuron_steps(xs, v)
        spikes += block_spikes
        if start + block < steps and one is not None:
            # i is 0 at run time; indexing with it keeps the slices in the
            # loop's kernel (see calibrate_steps).
            stop = min(steps, start + block)

            def advance(i, v, start=start, stop=stop):
                return if_neuron_steps([x_at(i + t) for t in range(start, stop)], v)[1]

            v_end = lax.fori_loop(0, one, advance, filled_like(v, xs[0]))
        v = v_end
    return spikes


def use_fused(backend: str, steps: int) -> bool:
    """Whether :func:`cosjax.run_snn` (``unroll=True``) runs the fused forms.

    CPU, up to :data:`UNROLL_MAX_STEPS` steps: yes -- measured on the
    project's CPUs, several times faster than ``lax.scan``. GPU and TPU: no,
    the ``lax.scan`` reference forms run there, because the fused forms were
    never measured on them (they work there, and give the same spikes).

    Args:
      backend: a JAX backend name ("cpu", "gpu", "tpu", ...).
      steps: S, the number of simulated steps.
    """
    return backend == "cpu" and steps <= UNROLL_MAX_STEPS
