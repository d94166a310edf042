"""The conversion methods beside COS: their neurons, in threshold units.

Every method converts the same QCFS layer (threshold ``lam``); only the
neuron that replaces it differs. As in :mod:`cosjax.neuron`, inputs are
divided by ``lam`` first, so a full spike is worth one, and each function
here takes a layer's input ``u [S, ...]`` and returns what the layer sends at
every step, ``[S, ...]``, before multiplication by ``lam``
(``docs/method.md`` states each rule and what T counts):

- ``if``: the IF neuron of plain conversion and of COS (:mod:`cosjax.neuron`);
  with ``signed=True`` it may also send -1 (:func:`signed_if_neuron`).
- ``srp``: residual membrane potential (:func:`srp_neuron`): a pre-simulation
  of tau steps, after which neurons left with no positive residual stay
  silent.
- ``group``: group neurons of m members (:func:`group_neuron`): up to m spikes
  of ``1/m`` each per step.
- ``parallel``: parallel spiking neurons (:func:`parallel_neuron`): all T
  steps of a layer at once from the mean input over the T steps.

These are plain ``lax.scan`` / array forms. Every threshold decision in
them has the surrogate derivative of :mod:`cosjax.surrogate` (through
:func:`cosjax.surrogate.decision`), so ``jax.grad`` reaches every layer for
every method, as for IF; the discrete gates (a signed neuron's "has sent
more +1 than -1", SRP's "kept on after pre-simulation") are held fixed.
The forward values never depend on the surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from cosjax.checks import check_int
from cosjax.neuron import V_INIT, filled_like
from cosjax.surrogate import DEFAULT, Surrogate, decision, spike

__all__ = ["IF", "METHODS", "SRP_MARGIN", "Method", "group_neuron", "parallel_neuron",
           "resolve_method", "signed_if_neuron", "srp_neuron", "time_mean"]

METHODS = ("if", "srp", "group", "parallel")
SRP_MARGIN = 1e-3
"""SRP: a neuron stays on after pre-simulation iff its residual exceeds this."""


@dataclass(frozen=True)
class Method:
    """A conversion method (hashable: a static argument of :func:`cosjax.simulate`).

    Attributes:
      name: one of :data:`METHODS`.
      members: m, the members of a group neuron (``group`` only; 1 elsewhere).
      signed: IF neurons may send -1 to take back an earlier spike (``if`` only).
    """

    name: str = "if"
    members: int = 1
    signed: bool = False

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.name!r}")
        check_int("members (m)", self.members, 1)
        if self.members != 1 and self.name != "group":
            raise ValueError(f"members (m)={self.members} applies to the group method only")
        if not isinstance(self.signed, bool):
            raise ValueError(f"signed must be True or False, got {self.signed!r}")
        if self.signed and self.name != "if":
            raise ValueError("signed spikes are an option of the IF neuron (method 'if')")

    @property
    def label(self) -> str:
        """A short name for tables: ``if``, ``if_signed``, ``srp``, ``group4``, ``parallel``."""
        if self.name == "group":
            return f"group{self.members}"
        return "if_signed" if self.signed else self.name

    def initial_potential(self) -> float:
        """The uncalibrated v0: 1/2 of a spike (of a member's spike for groups)."""
        return V_INIT / self.members

    def steps(self, time_steps: int, presim: int) -> int:
        """S, the steps simulated to report T: tau + T for SRP (its
        pre-simulation comes first), max(T, rho) otherwise."""
        return presim + time_steps if self.name == "srp" else max(time_steps, presim)

    def latency(self, time_steps: int, presim: int) -> int:
        """Every step an input is in the network to give the output at T:
        rho + T for COS (its pre-simulation steps are run before them, on
        the same input), tau + T for SRP, T otherwise."""
        return presim + time_steps

    def check(self, presim: int, iterations: int) -> None:
        """Raises ``ValueError`` for a presim/iterations the method does not have."""
        if self.name == "srp" and presim < 1:
            raise ValueError("method 'srp' needs presim (tau) >= 1 pre-simulation steps")
        if self.name != "if" and iterations != 1:
            raise ValueError(f"iterations (k) are rounds of COS calibration; method "
                             f"{self.name!r} has none (k must be 1)")
        if self.name in ("group", "parallel") and presim != 0:
            raise ValueError(f"method {self.name!r} has no pre-simulation: presim must be 0")
        if self.signed and presim != 0:
            raise ValueError("signed IF neurons with COS calibration are not defined: "
                             "presim must be 0 with signed=True")


IF = Method()
"""The IF neuron of plain conversion and COS."""


def resolve_method(method: str | Method) -> Method:
    """A :class:`Method` from itself or its name (``"group"`` has m = 4)."""
    if isinstance(method, Method):
        return method
    if method == "group":
        return Method("group", members=4)
    if isinstance(method, str):
        return Method(method)
    raise ValueError(f"method must be a name ({', '.join(METHODS)}) or a cosjax.Method, "
                     f"got {method!r}")


def signed_if_neuron(u: jax.Array, v0: jax.Array | float = V_INIT, *,
                     surrogate: Surrogate = DEFAULT) -> jax.Array:
    """IF neurons that may take a spike back.

    Per step: ``v = v + u_t``; send +1 if ``v >= 1``; else send -1 if
    ``v < 0`` and the neuron has sent more +1 than -1 so far; ``v = v - s``.
    Its net count never goes below zero, and from v0 = 1/2 it stays the
    input's running sum rounded to the nearest integer, clipped at zero,
    as long as one spike per step suffices to follow it.

    Args:
      u: inputs ``[S, ...]`` in threshold units.
      v0: initial potential, broadcastable to ``u[0]``.
      surrogate: the derivative of both decisions: the +1 at ``v >= 1`` as
        the IF neuron's, the -1 at ``v < 0`` that of ``1 - v >= 1`` (the
        condition on the net count is held fixed).
    Returns:
      spikes ``[S, ...]`` of -1/0/+1 in ``u.dtype``.
    """
    def step(carry, u_t):
        v, net = carry
        v = v + u_t
        up = spike(v, surrogate)
        down = (net > 0).astype(v.dtype) * decision((v < 0).astype(v.dtype), 1 - v, surrogate)
        s = up - down                       # exclusive: +1, -1 or 0, exactly
        return (v - s, net + s), s

    _, spikes = lax.scan(step, (filled_like(v0, u[0]), filled_like(0, u[0])), u)
    return spikes


def group_neuron(u: jax.Array, members: int, v0: jax.Array | float | None = None, *,
                 surrogate: Surrogate = DEFAULT) -> jax.Array:
    """Group neurons of m members that share one potential.

    Member i (i = 1..m) fires when ``v >= i/m``; the potential drops by
    ``1/m`` per member spike. Per step: ``v = v + u_t``;
    ``n = #{i : v >= i/m}`` (0..m); ``v = v - n * (1/m)``. The layer sends
    ``n * (1/m)`` (times ``lam``). With m = 1 this is the IF neuron, bitwise.

    Args:
      u: inputs ``[S, ...]`` in threshold units.
      members: m >= 1.
      v0: initial potential (default ``1/(2m)``, half a member's threshold).
      surrogate: member i's derivative is that of the IF spike at the
        potential ``v - i/m + 1``; a member's spike is worth ``1/m``, so
        the sent value ``n/m`` has the derivative of a staircase smoothed
        by the surrogate (``1`` everywhere for straight-through).
    Returns:
      member spike counts ``[S, ...]`` (0..m, in ``u.dtype``).
    """
    check_int("members (m)", members, 1)
    unit = jnp.asarray(1 / members, u.dtype)
    thresholds = jnp.arange(1, members + 1, dtype=u.dtype) * unit          # [m]
    v0 = V_INIT / members if v0 is None else v0

    levels = thresholds.reshape((-1,) + (1,) * (u.ndim - 1))                 # [m, 1, ...]

    def step(v, u_t):
        v = v + u_t
        fired = (v[None] >= levels).astype(v.dtype)                         # [m, ...]
        n = decision(fired, v[None] - levels + 1, surrogate).sum(0)
        return v - n * unit, n

    _, counts = lax.scan(step, filled_like(v0, u[0]), u)
    return counts


def srp_neuron(u: jax.Array, tau: int, v0: jax.Array | float = V_INIT, *,
               surrogate: Surrogate = DEFAULT) -> jax.Array:
    """IF neurons with a residual-membrane-potential pre-simulation (SRP).

    Steps 1..tau: IF neurons from ``v0``, sending their spikes. After step
    tau each neuron is kept on iff its potential exceeds ``SRP_MARGIN``
    (1e-3); all restart from ``v0``. Steps tau+1..S: IF neurons whose
    spikes are sent only by the neurons kept on (the others still integrate
    and reset, silently).

    Args:
      u: inputs ``[S, ...]`` in threshold units, S > tau.
      tau: pre-simulation steps (>= 1).
      v0: initial potential of both phases.
      surrogate: the spikes' derivative, as the IF neuron's (which neurons
        are kept on is held fixed).
    Returns:
      spikes ``[S, ...]`` of 0/1 in ``u.dtype``.
    """
    check_int("tau (presim)", tau, 1, u.shape[0])

    def step(v, u_t):
        v = v + u_t
        s = spike(v, surrogate)
        return v - s, s

    start = filled_like(v0, u[0])
    residual, first = lax.scan(step, start, u[:tau])
    _, rest = lax.scan(step, start, u[tau:])
    on = lax.stop_gradient((residual > SRP_MARGIN).astype(u.dtype))
    return jnp.concatenate([first, rest * on[None]])


def parallel_neuron(mean_u: jax.Array, steps: int, v0: jax.Array | float = V_INIT, *,
                    surrogate: Surrogate = DEFAULT) -> jax.Array:
    """Parallel spiking neurons: all T steps of a layer at once.

    Step t (1..T) sends a spike iff ``(T / t) * mean_u + v0 / t >= 1``, i.e.
    iff ``t <= T * mean_u + v0``: the first ``clip(floor(T mean_u + v0), 0, T)``
    steps spike, which is the QCFS activation of the mean input with L = T.
    The output of step t needs the inputs of all T steps (the mean); a run
    gives its accuracy at T only.

    Args:
      mean_u: the layer's mean input over the T steps ``[...]``, threshold units.
      steps: T >= 1.
      v0: the initial potential (1/2: QCFS's shift).
      surrogate: step t's derivative is that of the IF spike at the
        potential ``T * mean_u + v0 - t + 1`` (the decision ``t <= T *
        mean_u + v0``); with a triangle of width 1 the count's derivative
        is ``T``, the rate's.
    Returns:
      spikes ``[T, ...]`` of 0/1 in ``mean_u.dtype``.
    """
    check_int("steps (T)", steps, 1)
    t = jnp.arange(1, steps + 1, dtype=mean_u.dtype).reshape((-1,) + (1,) * mean_u.ndim)
    total = jnp.asarray(steps, mean_u.dtype)
    ratio = total / t
    offset = jnp.asarray(v0, mean_u.dtype) / t
    fired = (ratio * mean_u[None] + offset >= 1).astype(mean_u.dtype)
    return decision(fired, total * mean_u[None] + v0 - t + 1, surrogate)


def time_mean(u: jax.Array) -> jax.Array:
    """``[S, ...] -> [...]``: the mean over steps, summed in step order
    (``((u_1 + u_2) + u_3) + ...``, then divided by S), the order the
    tests' PyTorch reference uses."""
    total = u[0]
    for t in range(1, u.shape[0]):
        total = total + u[t]
    return total / jnp.asarray(u.shape[0], u.dtype)
