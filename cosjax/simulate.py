"""Simulation of the converted SNN, layer by layer and time-batched.

The QCFS model is run once through ``model.apply`` with every :class:`QCFS`
call intercepted: instead of the quantised activation, its input sequence
``[S*B, ...]`` (time-major) is divided by the threshold, calibrated
(:func:`cosjax.calibrate_v0`), run through IF neurons with ``lax.scan``
(:func:`cosjax.if_neuron`) and multiplied by the threshold again. All linear
layers (conv, eval-mode BN, pooling, residual sums, dense) therefore see the
``S*B`` batch in one call. The first spiking layer's input does not depend on
time (direct coding), so the layers in front of it run once on ``[B, ...]``
and their output is broadcast over the S steps.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cosjax import neuron, xla_options
from cosjax.layers import check_image_batch
from cosjax.neuron import (V_INIT, calibrate_steps, calibrate_v0, if_neuron, if_neuron_blocks,
                           opaque_one)
from cosjax.qcfs import QCFS

Potentials = dict[str, jax.Array]


def layer_name(module: nn.Module) -> str:
    """The key of a spiking layer in potential pytrees: its module path."""
    return "/".join(str(p) for p in module.path)


def check_snn_args(time_steps: Any, presim: Any, iterations: Any) -> None:
    """Raises ``ValueError`` naming the first invalid SNN setting."""
    for name, value, low in (("time_steps (T)", time_steps, 1), ("presim (rho)", presim, 0),
                             ("iterations (k)", iterations, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _spiking_layer(x: jax.Array, lam: jax.Array, *, batch: int, steps: int, presim: int,
                   iterations: int, v0: jax.Array | None, want_spikes: bool,
                   unroll: bool = True) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """One QCFS layer as IF neurons.

    With ``unroll`` and up to :data:`cosjax.neuron.UNROLL_MAX_STEPS` steps,
    the IF loop is unrolled (:func:`cosjax.neuron.if_neuron_blocks`): XLA fuses slicing,
    division by ``lam``, the steps of a block and the output scaling into one
    kernel. The calibrated v0 and the potential between blocks are computed
    in loops with a run-time trip count (:func:`cosjax.neuron.opaque_one`),
    so they are stored once rather than recomputed for every output step.
    Otherwise the ``lax.scan`` forms run. Both give identical spikes.

    Args:
      x: the layer input, ``[S*B, ...]`` (time-major) or ``[B, ...]`` when it
        is the same at every step (then no ``[S, B, ...]`` copy is made).
      lam: the layer's threshold (scalar).
      v0: initial potentials ``[B, ...]`` to use as they are, or None to
        calibrate them (plain ``1/2`` when ``presim == 0``).
      want_spikes: also return the spikes ``[S, B, ...]`` (else None).
    Returns:
      ``(out [S*B, ...], spikes [S, B, ...] or None, v0 [B, ...])``.
    """
    lam = lam.astype(x.dtype)
    if x.shape[0] == batch * steps:
        constant = False
    elif x.shape[0] == batch:
        constant = True
    else:
        raise ValueError(f"a spiking layer got a batch of {x.shape[0]}, expected "
                         f"{batch} or {steps}x{batch}")
    if unroll and steps <= neuron.UNROLL_MAX_STEPS:
        def x_at(t: int | jax.Array) -> jax.Array:   # step t in threshold units, [B, ...]
            if constant:
                return x / lam
            if isinstance(t, int):
                return x[t * batch:(t + 1) * batch] / lam
            return lax.dynamic_slice_in_dim(x, t * batch, batch) / lam

        one = opaque_one(lam)
        if v0 is None:
            v0 = calibrate_steps(x_at, presim, iterations, rounds=iterations * one)
        spike_list = if_neuron_blocks(x_at, steps, v0, one=one)
        out = jnp.concatenate([s * lam for s in spike_list], axis=0)
        return out, (jnp.stack(spike_list) if want_spikes else None), v0
    u = x / lam
    u = (jnp.broadcast_to(u, (steps,) + u.shape) if constant
         else u.reshape((steps, batch) + x.shape[1:]))
    if v0 is None:
        v0 = calibrate_v0(u, presim, iterations) if presim > 0 else jnp.full(u.shape[1:], V_INIT, u.dtype)
    spikes, _ = if_neuron(u, v0)
    out = (spikes * lam).reshape((steps * batch,) + u.shape[2:])
    return out, spikes, v0


def run_snn(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
            steps: int, presim: int, iterations: int,
            initial_potentials: Mapping[str, jax.Array] | None = None,
            on_layer=None, micro_batch: int | None = None,
            unroll: bool = True) -> tuple[jax.Array, Potentials]:
    """Traceable SNN run (no jit, no checks): the core of :func:`simulate`.

    Every linear layer after the first spiking layer sees a time-major
    ``[S*B, ...]`` batch (row ``t*B + b`` is step t of sample b).

    Args:
      images: ``[B, H, W, C]``.
      steps: S, the number of simulated steps.
      initial_potentials: optional ``{layer: v0 [B, ...]}`` replacing
        calibration for the layers it names.
      micro_batch: optional m: run the samples in ``ceil(B / m)`` sequential
        chunks of m (``lax.map``; the last chunk zero-padded), so activation
        memory scales with ``S * m`` instead of ``S * B``; results are those
        of the whole batch. Chunk c holds samples ``c, c + n, c + 2n, ...``
        (n chunks), so a batch sharded over devices stays spread over all of
        them. Not combinable with ``on_layer``.
      on_layer: optional ``callback(name, x_raw, lam, spikes [S, B, ...])``, with
        ``x_raw`` the layer input before division by ``lam`` (``[S*B, ...]``, or
        ``[B, ...]`` when constant over time),
        called at trace time for every spiking layer (for analysis).
      unroll: unroll the IF time loop when S <= 32 (faster; False always
        uses ``lax.scan``; both give identical spikes).
    Returns:
      ``(outputs [S, B, classes], {layer: v0 [B, ...]})``.
    """
    batch = images.shape[0]
    if presim > steps:
        raise ValueError(f"presim (rho)={presim} exceeds the {steps} simulated steps "
                         "(simulate S = max(T, rho) steps)")
    if micro_batch is not None:
        check_micro_batch(micro_batch)
        if micro_batch < batch:
            if on_layer is not None:
                raise ValueError("on_layer needs the whole batch at once: use micro_batch=None")
            run = functools.partial(run_snn, model, variables, steps=steps, presim=presim,
                                    iterations=iterations, unroll=unroll)
            return _micro_batched(run, images, initial_potentials, micro_batch)
    potentials: Potentials = {}
    given = dict(initial_potentials or {})

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not (isinstance(module, QCFS) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        name = layer_name(module)
        lam = module.get_variable("params", "lam")
        if lam is None:
            raise ValueError(f"QCFS layer {name} has no 'lam' parameter in variables")
        out, spikes, v0 = _spiking_layer(
            args[0], lam, batch=batch, steps=steps, presim=presim,
            iterations=iterations, v0=given.get(name), want_spikes=on_layer is not None,
            unroll=unroll)
        potentials[name] = v0
        if on_layer is not None:
            on_layer(name, args[0], lam, spikes)
        return out

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images)
    if not potentials:
        raise ValueError("model has no QCFS layers: nothing to convert to spiking neurons")
    unknown = set(given) - set(potentials)
    if unknown:
        raise ValueError(f"initial_potentials names unknown layers: {sorted(unknown)}")
    return logits.reshape((steps, batch) + logits.shape[1:]), potentials


def check_micro_batch(micro_batch: Any) -> None:
    """Raises ``ValueError`` unless ``micro_batch`` is None or an int >= 1."""
    if micro_batch is not None and (not isinstance(micro_batch, int)
                                    or isinstance(micro_batch, bool) or micro_batch < 1):
        raise ValueError(f"micro_batch must be None or an int >= 1, got {micro_batch!r}")


def _micro_batched(run, images: jax.Array, initial_potentials: Mapping[str, jax.Array] | None,
                   micro_batch: int) -> tuple[jax.Array, Potentials]:
    """``run(images [m, ...], initial_potentials) -> (outputs [S, m, ...], potentials)``
    over strided chunks of m samples with ``lax.map``; returns whole-batch results."""
    batch = images.shape[0]
    chunks = -(-batch // micro_batch)
    padded = chunks * micro_batch

    def split(a):   # [B, ...] -> [chunks, m, ...], chunk c = samples c, c + chunks, ...
        a = jnp.pad(a, [(0, padded - batch)] + [(0, 0)] * (a.ndim - 1))
        return jnp.swapaxes(a.reshape((micro_batch, chunks) + a.shape[1:]), 0, 1)

    def merge(a):   # [chunks, m, ...] -> [B, ...]
        return jnp.swapaxes(a, 0, 1).reshape((padded,) + a.shape[2:])[:batch]

    given = jax.tree_util.tree_map(split, dict(initial_potentials or {}))
    outputs, potentials = lax.map(lambda args: run(args[0], initial_potentials=args[1]),
                                  (split(images), given))
    outputs = jnp.moveaxis(merge(jnp.moveaxis(outputs, 2, 1)), 0, 1)  # [S, B, ...]
    return outputs, jax.tree_util.tree_map(merge, potentials)


def _simulate_steps(model, variables, images, initial_potentials, *, time_steps, presim,
                    iterations, return_potentials, micro_batch=None):
    steps = max(time_steps, presim)
    outputs, potentials = run_snn(model, variables, images, steps=steps, presim=presim,
                                  iterations=iterations, initial_potentials=initial_potentials,
                                  micro_batch=micro_batch)
    return outputs[:time_steps], (potentials if return_potentials else None)


@functools.cache
def _simulate_jit():
    """The jitted :func:`_simulate_steps` (created on first use, when the
    backend, and so the compiler options, are known)."""
    return xla_options.jit(_simulate_steps, static_argnames=(
        "model", "time_steps", "presim", "iterations", "return_potentials", "micro_batch"))


def simulate(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
             time_steps: int, presim: int = 0, iterations: int = 1,
             initial_potentials: Mapping[str, jax.Array] | None = None,
             return_potentials: bool = False, micro_batch: int | None = None):
    """Runs the SNN converted from a QCFS model, with offset-spike calibration.

    Every QCFS layer becomes IF neurons with threshold ``lam``; ``presim``
    (rho) > 0 calibrates each neuron's initial potential per sample with
    ``iterations`` (k) rounds of the COS shift rule. S = max(T, rho) steps
    are simulated; the outputs of steps 1..T are returned. Jit-compiled once
    per (model, input shape and dtype, T, rho, k).

    Args:
      model: a Flax module whose activations are :class:`cosjax.QCFS`.
      variables: its variables (``params`` and ``batch_stats``).
      images: ``[B, H, W, C]``, fed unchanged at every step (direct coding).
      time_steps: T >= 1.
      presim: rho >= 0; 0 is plain QCFS conversion (v0 = 1/2).
      iterations: k >= 1 rounds of calibration (1 is the reference).
      initial_potentials: optional ``{layer: v0 [B, ...]}`` to use instead of
        calibrating those layers (e.g. potentials returned by an earlier call).
      return_potentials: also return the initial potentials used.
      micro_batch: optional m: evaluate the batch in chunks of m samples
        inside the one jitted call (see :func:`run_snn`); bounds activation
        memory by ``S * m`` images per layer with identical results.
    Returns:
      ``outputs [T, B, classes]`` (per-step outputs of the last layer), or
      ``(outputs, {layer: v0 [B, ...]})`` when ``return_potentials``.
    """
    check_snn_args(time_steps, presim, iterations)
    check_image_batch(images)
    check_micro_batch(micro_batch)
    outputs, potentials = _simulate_jit()(
        model, variables, images, dict(initial_potentials) if initial_potentials else None,
        time_steps=time_steps, presim=presim, iterations=iterations,
        return_potentials=return_potentials, micro_batch=micro_batch)
    return (outputs, potentials) if return_potentials else outputs


def correct_per_step(outputs: jax.Array, labels: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
    """Correct predictions of the accumulated output at every step.

    Args:
      outputs: per-step outputs ``[T, B, classes]``.
      labels: integer labels ``[B]``.
      mask: optional ``[B]`` booleans; False entries (padding) never count.
    Returns:
      ``[T]`` int32: at index t-1, how many samples the sum of outputs over
      steps 1..t classifies correctly (the argmax of sum and mean agree).
    """
    def step(total, out_t):
        total = total + out_t
        return total, jnp.argmax(total, axis=-1)

    _, predictions = lax.scan(step, jnp.zeros_like(outputs[0]), outputs)
    correct = predictions == labels[None, :]
    if mask is not None:
        correct = correct & mask[None, :].astype(bool)
    return correct.sum(axis=1, dtype=jnp.int32)
