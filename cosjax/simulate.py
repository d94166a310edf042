"""Simulation of the converted SNN, layer by layer and time-batched.

The QCFS model is run once through ``model.apply`` with every :class:`QCFS`
call intercepted: instead of the quantised activation, its input sequence
``[B*S, ...]`` (time-batched, batch-major: row ``b*S + t`` is step t of
example b) is
divided by the threshold, calibrated (:func:`cosjax.calibrate_v0`), run
through IF neurons (:func:`cosjax.if_neuron`) and multiplied by the threshold
again. Every other layer (conv, eval-mode BN, pooling, residual sums, dense)
therefore sees the ``B*S`` batch in one call. The first spiking layer's input
does not depend on time (direct coding), so the layers in front of it run
once on ``[B, ...]`` and their output is broadcast over the S steps.

The batch axis is the major one so that a batch sharded over devices
(``NamedSharding(mesh, P("data"))``) stays sharded the same way in the
time-batched view: the contiguous block of rows a device holds is its own
examples at every step, and no layer exchanges activations between devices
(a time-major ``t*B + b`` layout would give each device some time steps of
every example instead). :func:`to_steps` and :func:`from_steps` convert
between ``[B*S, ...]`` and the neurons' ``[S, B, ...]``.

The contract that makes this time-batching the SNN: every operation between
spiking layers, and from the last spiking layer to the output, acts on each
example separately, is the same at every time step, and is affine in the
spike train (so summing its outputs over time equals applying it to the
summed input). :func:`cosjax.check_convertible` verifies this from the traced
program once per compilation (``check=False`` skips it).

Which neuron code runs: the ``lax.scan`` reference forms of
:mod:`cosjax.neuron`, or -- decided by :func:`cosjax._fused.use_fused`: in
a program for the CPU, for S <= 32 steps, when ``unroll=True`` (the default)
-- the unrolled forms of :mod:`cosjax._fused`, which give bitwise the same
spikes and potentials. The platform is the one the program is lowered for
(:func:`cosjax.target.on_platform`), not the host's. Gradients always follow the scan forms (see
:func:`_if_layer`), with the spike function's surrogate derivative
(:mod:`cosjax.surrogate`); calibrated initial potentials are held fixed
(``stop_gradient``): calibration is a discrete decision, and its shifts are
not meant to be trained.

Spiking layers are named by their module path; a QCFS module called at more
than one place is a separate spiking layer at every call, named ``path``,
``path#2``, ``path#3``, ... in call order (:func:`layer_names`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cosjax import _fused, methods, target, xla_options
from cosjax.checks import check_int
from cosjax.convertible import check_convertible
from cosjax.methods import IF, Method, resolve_method
from cosjax.neuron import V_INIT, calibrate_v0, if_neuron
from cosjax.qcfs import QCFS
from cosjax.surrogate import DEFAULT, Surrogate, check_surrogate

__all__ = [
    "Potentials", "SOWN", "STATIC_ARGNAMES", "check_initial_potentials", "check_input_batch",
    "check_micro_batch", "check_snn_args", "correct_per_step", "from_steps", "is_time_batched",
    "layer_name", "layer_names", "run_snn", "simulate", "to_steps"
]

Potentials = dict[str, jax.Array]

SOWN = "cosjax_snn"
"""The Flax collection through which :func:`run_snn` takes values (initial
potentials, what its hooks return) out of ``model.apply``. A lifted
transform inside the model (``nn.remat``) traces its body apart and carries
the collections it writes out of that trace; a value stored from inside in a
Python dict would be one of that trace's tracers (``UnexpectedTracerError``)."""


def _keep(module: nn.Module, value: Any, counts: dict[tuple, int]) -> tuple:
    """Sows ``value`` (a pytree of arrays) into ``module``'s :data:`SOWN`
    collection; returns its place ``(module path, index of the call)`` for
    :func:`_read` (``counts`` numbers the values sown per path). Where the
    collection cannot be written -- inside ``nn.vmap``, which carries only the
    collections of its ``variable_axes`` -- returns ``(None, value)``: the
    value is kept as it is, valid only within that trace."""
    if not module.sow(SOWN, SOWN, value):
        return None, value
    index = counts.get(module.path, 0)
    counts[module.path] = index + 1
    return module.path, index


def _read(state: Mapping[str, Any], place: tuple) -> Any:
    """The value at ``place`` (from :func:`_keep`) in the collections
    ``state`` returned by ``model.apply(..., mutable=[SOWN])``."""
    path, index = place
    if path is None:
        return index                                     # kept as it is
    node = state[SOWN]
    for part in path:
        node = node[part]
    return node[SOWN][index]


def layer_name(module: nn.Module) -> str:
    """A module's path (``"stage1_block0/act1"``), the base of its layer names."""
    return "/".join(str(p) for p in module.path)


def layer_names() -> Callable[[nn.Module], str]:
    """A namer for one trace: ``name(module)`` returns the module's path at
    its first call, ``path#2`` at its second, and so on."""
    calls: dict[str, int] = {}

    def name(module: nn.Module) -> str:
        path = layer_name(module)
        calls[path] = calls.get(path, 0) + 1
        return path if calls[path] == 1 else f"{path}#{calls[path]}"

    return name


def is_time_batched(x: jax.Array, batch: int, steps: int, what: str) -> bool:
    """The layout of a tensor inside the SNN: True for time-batched ``[B*S, ...]``,
    False for ``[B, ...]`` (constant over time); otherwise ``ValueError``
    naming ``what``. (For S = 1 both layouts coincide: True.)"""
    if x.shape[0] == batch * steps:
        return True
    if x.shape[0] == batch:
        return False
    raise ValueError(f"{what} got a batch of {x.shape[0]}, expected {batch} (constant over "
                     f"time) or {batch}x{steps} (time-batched)")


def to_steps(x: jax.Array, batch: int, steps: int) -> jax.Array:
    """Time-batched ``[B*S, ...]`` (row ``b*S + t``) -> ``[S, B, ...]``."""
    return jnp.swapaxes(x.reshape((batch, steps) + x.shape[1:]), 0, 1)


def from_steps(x: jax.Array) -> jax.Array:
    """``[S, B, ...]`` -> time-batched ``[B*S, ...]`` (row ``b*S + t``)."""
    return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def check_snn_args(time_steps: Any, presim: Any, iterations: Any) -> None:
    """Raises ``ValueError`` naming the first invalid SNN setting."""
    check_int("time_steps (T)", time_steps, 1)
    check_int("presim (rho)", presim, 0)
    check_int("iterations (k)", iterations, 1)
    if iterations > 1 and presim == 0:
        raise ValueError(f"iterations (k)={iterations} needs presim (rho) > 0: without "
                         "pre-simulation there is nothing to calibrate")


def check_micro_batch(micro_batch: Any) -> None:
    """Raises ``ValueError`` unless ``micro_batch`` is None or an int >= 1."""
    check_int("micro_batch", micro_batch, 1, allow_none=True)


def check_input_batch(inputs: Any, name: str = "images") -> None:
    """Raises ``ValueError`` unless ``inputs`` is an array with a batch axis."""
    if getattr(inputs, "ndim", 0) < 1:
        raise ValueError(f"{name} must be an array [B, ...] with a batch axis, got "
                         f"{getattr(inputs, 'shape', type(inputs).__name__)}")


def check_initial_potentials(initial_potentials: Mapping[str, Any] | None) -> Potentials | None:
    """The given initial potentials as ``{layer: array}`` (None stays None).

    Raises ``ValueError`` in one line unless ``initial_potentials`` is a
    mapping from layer names (str) to real arrays (or nested lists of
    numbers, converted here), and naming the first layer whose potentials
    hold a NaN or an infinity (a neuron that starts there never fires, or
    fires at every step: a dead or saturated layer, silently). Traced
    values (inside the user's jit) cannot be inspected and pass; there the
    outputs of the examples they belong to are NaN (:func:`run_snn`).
    """
    if initial_potentials is None:
        return None
    if not isinstance(initial_potentials, Mapping):
        raise ValueError("initial_potentials must be a mapping {layer name: v0 [B, ...]}, "
                         f"got {type(initial_potentials).__name__}")
    out = {}
    for name, v0 in initial_potentials.items():
        if not isinstance(name, str):
            raise ValueError(f"initial_potentials keys must be layer names (str), got {name!r}")
        if not isinstance(v0, jax.Array):
            try:
                v0 = jnp.asarray(v0)
            except (TypeError, ValueError):
                raise ValueError(f"initial_potentials[{name!r}] is not an array of numbers "
                                 f"[B, ...] (got {type(v0).__name__})") from None
        if not jnp.issubdtype(v0.dtype, jnp.floating) and not jnp.issubdtype(v0.dtype,
                                                                                jnp.integer):
            raise ValueError(f"initial_potentials[{name!r}] must hold real numbers, got "
                             f"dtype {v0.dtype}")
        if v0.ndim < 1:
            raise ValueError(f"initial_potentials[{name!r}] must be an array [B, ...] with a "
                             f"batch axis, got shape {v0.shape}")
        if not isinstance(v0, jax.core.Tracer) and not bool(jnp.isfinite(v0).all()):
            raise ValueError(f"initial_potentials[{name!r}] holds NaN or infinite values; "
                             "initial potentials must be finite")
        out[name] = v0
    return out


# ---------------------------------------------------------------------------
# One spiking layer.

def _scan_layer(x, lam, v0, *, batch, steps, time_batched, want_spikes, surrogate):
    """The IF layer with :func:`cosjax.if_neuron` (lax.scan): ``(x, lam, v0) ->
    (out [B*S, ...], spikes [S, B, ...] or None)``."""
    u = x / lam
    u = to_steps(u, batch, steps) if time_batched else jnp.broadcast_to(u, (steps,) + u.shape)
    spikes, _ = if_neuron(u, v0, surrogate=surrogate)
    out = from_steps(spikes * lam)
    return out, (spikes if want_spikes else None)


def _step_reader(x, lam, batch, time_batched):
    """``t -> x_t / lam`` for a time-batched or constant ``x`` (t an int or traced)."""
    if not time_batched:
        return lambda t: x / lam
    by_example = x.reshape((batch, x.shape[0] // batch) + x.shape[1:])   # [B, S, ...]

    def x_at(t):
        if isinstance(t, int):
            return by_example[:, t] / lam
        return lax.dynamic_index_in_dim(by_example, t, axis=1, keepdims=False) / lam
    return x_at


def _fused_layer(x, lam, v0, *, batch, steps, time_batched, want_spikes, surrogate):
    """:func:`_scan_layer` with the unrolled blocks of :mod:`cosjax._fused`
    (bitwise the same values)."""
    spike_list = _fused.if_neuron_blocks(_step_reader(x, lam, batch, time_batched), steps, v0,
                                         one=_fused.opaque_one(lam))
    out = from_steps(jnp.stack([s * lam for s in spike_list]))
    return out, (jnp.stack(spike_list) if want_spikes else None)


def _if_layer(x, lam, v0, *, fused: bool, **static):
    """IF neurons on the layer input ``x``. With ``fused``, in a program for
    the CPU (:func:`cosjax.target.on_platform`), the values come from
    :func:`_fused_layer` and the derivatives from :func:`_scan_layer` (a
    ``custom_jvp``; the fused forms' run-time loops cannot be reverse
    differentiated). Otherwise :func:`_scan_layer` does both."""
    scan = functools.partial(_scan_layer, **static)
    if not fused:
        return scan(x, lam, v0)
    fast = jax.custom_jvp(functools.partial(_fused_layer, **static))
    fast.defjvp(lambda primals, tangents: (fast.fun(*primals),
                                           jax.jvp(scan, primals, tangents)[1]))
    return target.on_platform((x, lam, v0), cpu=fast, other=scan)


def _method_layer(x, lam, v0, *, method: Method, batch, steps, time_batched, presim,
                  want_spikes, surrogate):
    """A spiking layer of the methods of :mod:`cosjax.methods` (not plain IF):
    ``(x, lam, v0) -> (out [B*S, ...], events [S, B, ...] or None)``, events
    being the spikes sent (member spike counts for groups, -1/0/+1 signed);
    every threshold decision has ``surrogate``'s derivative."""
    u = x / lam
    if method.name == "parallel":
        mean = methods.time_mean(to_steps(u, batch, steps)) if time_batched else u
        events = methods.parallel_neuron(mean, steps, v0, surrogate=surrogate)
        values = events
    else:
        u = to_steps(u, batch, steps) if time_batched else jnp.broadcast_to(u, (steps,) + u.shape)
        if method.name == "group":
            events = methods.group_neuron(u, method.members, v0, surrogate=surrogate)
            values = events * jnp.asarray(1 / method.members, u.dtype)
        elif method.name == "srp":
            events = values = methods.srp_neuron(u, presim, v0, surrogate=surrogate)
        else:
            events = values = methods.signed_if_neuron(u, v0, surrogate=surrogate)
    return from_steps(values * lam), (events if want_spikes else None)


def _calibrate(x, lam, *, batch, steps, time_batched, presim, iterations, fused):
    """The calibrated v0 ``[B, ...]`` of a layer input ``x`` (plain 1/2 for rho = 0);
    with ``fused``, the unrolled form in a program for the CPU."""
    def unrolled(x, lam):
        return _fused.calibrate_steps(_step_reader(x, lam, batch, time_batched), presim,
                                      iterations, rounds=iterations * _fused.opaque_one(lam))

    def scanned(x, lam):
        if presim == 0:
            return jnp.full((batch,) + x.shape[1:], V_INIT, x.dtype)
        u = x / lam
        u = (to_steps(u, batch, steps)[:presim] if time_batched
             else jnp.broadcast_to(u, (presim,) + u.shape))
        return calibrate_v0(u, presim, iterations)

    if not fused:
        return scanned(x, lam)
    return target.on_platform((x, lam), cpu=unrolled, other=scanned)


def _spiking_layer(name: str, x: jax.Array, lam: jax.Array, v0: jax.Array | None, *,
                   batch: int, steps: int, presim: int, iterations: int, want_spikes: bool,
                   fused: bool, surrogate: Surrogate, method: Method = IF):
    """One QCFS layer as IF neurons.

    Args:
      name: the layer's name (for error messages).
      x: the layer input, ``[B*S, ...]`` (time-batched) or ``[B, ...]`` when it
        is the same at every step (then no ``[S, B, ...]`` copy is made).
      lam: the layer's threshold (scalar).
      v0: initial potentials ``[B, ...]`` to use as they are, or None to
        calibrate them (plain 1/2 when ``presim == 0``; held fixed under
        differentiation; the method's own start for the other methods).
      method: the neuron (:class:`cosjax.methods.Method`); COS calibration
        is the IF method's.
    Returns:
      ``(out [B*S, ...], spikes [S, B, ...] or None, v0 [B, ...])``.
    """
    time_batched = is_time_batched(x, batch, steps, f"spiking layer {name}")
    lam = lam.astype(x.dtype)
    plain_if = method == IF
    if v0 is None and not plain_if:
        v0 = jnp.full((batch,) + x.shape[1:], method.initial_potential(), x.dtype)
    elif v0 is None:
        v0 = lax.stop_gradient(_calibrate(
            lax.stop_gradient(x), lax.stop_gradient(lam), batch=batch, steps=steps,
            time_batched=time_batched, presim=presim, iterations=iterations, fused=fused))
    else:
        want = (batch,) + x.shape[1:]
        if tuple(jnp.shape(v0)) != want:
            raise ValueError(f"initial_potentials[{name!r}] has shape {tuple(jnp.shape(v0))}, "
                             f"expected {want} (the layer's [B, ...])")
        v0 = jnp.asarray(v0).astype(x.dtype)
    if not plain_if:
        out, spikes = _method_layer(x, lam, v0, method=method, batch=batch, steps=steps,
                                    time_batched=time_batched, presim=presim,
                                    want_spikes=want_spikes, surrogate=surrogate)
        return out, spikes, v0
    out, spikes = _if_layer(x, lam, v0, fused=fused, batch=batch, steps=steps,
                            time_batched=time_batched, want_spikes=want_spikes, surrogate=surrogate)
    return out, spikes, v0


# ---------------------------------------------------------------------------
# The whole network.

def run_snn(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
            steps: int, presim: int, iterations: int,
            initial_potentials: Mapping[str, jax.Array] | None = None,
            on_layer: Callable | None = None, on_linear: Callable | None = None,
            micro_batch: int | None = None, unroll: bool = True,
            surrogate: Surrogate = DEFAULT, apply_kwargs: Mapping[str, Any] | None = None,
            check: bool = True, method: str | Method = "if",
            return_records: bool = False) -> tuple:
    """Traceable SNN run (no jit): the core of :func:`simulate`.

    Every layer after the first spiking layer sees a time-batched
    ``[B*S, ...]`` batch (row ``b*S + t`` is step t of example b; see
    :func:`to_steps`), which keeps a batch sharded over devices sharded.

    Args:
      images: the input batch ``[B, ...]`` (any rank), fed unchanged at every
        step (direct coding).
      steps: S, the number of simulated steps (>= presim).
      presim, iterations: rho and k of the calibration.
      initial_potentials: optional ``{layer: v0 [B, ...]}`` replacing
        calibration for the layers it names.
      on_layer: optional hook ``on_layer(name, x_raw, lam, spikes [S, B, ...])``
        called at trace time for every spiking layer, ``x_raw`` being the
        layer input before division by ``lam`` (``[B*S, ...]``, or ``[B, ...]``
        when constant over time; see :func:`is_time_batched`).
      on_linear: optional hook ``on_linear(name, module, x)`` called at trace
        time for every call of a module that owns a ``kernel`` parameter
        (conv, dense, ... layers), with its input ``x`` in either layout.
        Inside a lifted transform of the model (``nn.remat``) the hooks run
        in that transform's own trace: arrays they store elsewhere escape it
        (``UnexpectedTracerError``); return them instead, with
        ``return_records``.
      micro_batch: optional m: run the examples in ``ceil(B / m)`` sequential
        chunks of m (``lax.map``; the last chunk zero-padded), so activation
        memory scales with ``S * m`` instead of ``S * B``; results are those
        of the whole batch. Chunk c holds examples ``c, c + n, c + 2n, ...``
        (n chunks), so a batch sharded over devices stays spread over all of
        them. Not combinable with the hooks.
      unroll: True: the neuron forms chosen by :func:`cosjax._fused.use_fused`
        for the platform lowered for (fused on CPU for S <= 32); False: always the
        ``lax.scan`` forms. Both give identical spikes.
      surrogate: the spike function's derivative (see :mod:`cosjax.surrogate`).
      apply_kwargs: keyword arguments of ``model.apply`` (e.g. ``train=False``).
      check: run :func:`cosjax.check_convertible` first (at trace time).
      method: the neuron replacing every QCFS layer (:mod:`cosjax.methods`):
        ``"if"`` (plain conversion, COS with presim > 0), ``"srp"`` (presim
        is its tau: steps 1..tau are its pre-simulation), ``"group"``
        (m = 4) or ``"parallel"``, or a :class:`cosjax.Method`
        (``Method("group", members=m)``, ``Method("if", signed=True)``).
        The hooks' ``spikes`` are then the events each method sends.
      return_records: also return what the hooks returned (pytrees of
        arrays; None is not recorded), ``{layer name: value}``.
    Returns:
      ``(outputs [S, B, ...], {layer: v0 [B, ...]})``, and the records
      third with ``return_records``; the outputs of an
      example whose input, or whose given initial potentials (traced: at
      top level these are refused), hold a NaN or an infinity are NaN. A model with
      several outputs (a tuple, a dict) gives the same structure, each leaf
      ``[S, B, ...]``; ``mutable`` in ``apply_kwargs`` is refused.
    """
    check_input_batch(images)
    check_int("steps (S)", steps, 1)
    check_snn_args(steps, presim, iterations)
    check_micro_batch(micro_batch)
    check_surrogate(surrogate)
    initial_potentials = check_initial_potentials(initial_potentials)
    method = resolve_method(method)
    method.check(presim, iterations)
    if presim > steps:
        raise ValueError(f"presim (rho)={presim} exceeds the {steps} simulated steps "
                         "(simulate S = max(T, rho) steps)")
    if method.name == "srp" and presim == steps:
        raise ValueError(f"method 'srp' with presim (tau)={presim} needs more than {steps} "
                         "steps: its output starts after the pre-simulation")
    apply_kwargs = dict(apply_kwargs or {})
    if "mutable" in apply_kwargs:
        raise ValueError("apply_kwargs has 'mutable': the SNN cannot update collections (a "
                         "batch-norm update in training mode is not a conversion); evaluate "
                         "with the statistics fixed, e.g. train=False")
    if check:
        check_convertible(model, variables, images, **apply_kwargs)
    run = functools.partial(_run, model, variables, steps=steps, presim=presim,
                            iterations=iterations, unroll=unroll, surrogate=surrogate,
                            apply_kwargs=apply_kwargs, method=method)
    if micro_batch is not None and micro_batch < images.shape[0]:
        if on_layer is not None or on_linear is not None:
            raise ValueError("on_layer/on_linear need the whole batch at once: use "
                             "micro_batch=None")
        outputs, potentials = _micro_batched(run, images, initial_potentials, micro_batch)
        records = {}
    else:
        outputs, potentials, records = run(images, initial_potentials, on_layer=on_layer,
                                           on_linear=on_linear, return_records=return_records)
    finite = jnp.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)
    for v0 in (initial_potentials or {}).values():   # traced here: not refused up front
        finite = finite & jnp.isfinite(v0.reshape(v0.shape[0], -1)).all(axis=1)

    def mask(out):
        return jnp.where(finite.reshape((1, -1) + (1,) * (out.ndim - 2)), out, jnp.nan)

    outputs = jax.tree_util.tree_map(mask, outputs)
    return (outputs, potentials, records) if return_records else (outputs, potentials)


def _run(model, variables, images, initial_potentials, *, steps, presim, iterations, unroll,
         surrogate, apply_kwargs, method, on_layer=None, on_linear=None, return_records=False):
    """:func:`run_snn` on one (micro-)batch, without checks or NaN masking:
    ``(outputs, potentials, records)``. Values computed inside ``model.apply``
    come out through the collection :data:`SOWN` (:func:`_keep`)."""
    batch = images.shape[0]
    # The fused forms where a program for the CPU runs them (on_platform decides).
    fused = unroll and method == IF and _fused.use_fused("cpu", steps)
    places: dict[str, tuple] = {}                        # layer -> place of its v0
    record_places: dict[str, tuple] = {}                 # layer -> place of its hook's value
    counts: dict[tuple, int] = {}
    given = dict(initial_potentials or {})
    spiking_name, linear_name = layer_names(), layer_names()

    def record(name, module, value):
        if return_records and value is not None:
            record_places[name] = _keep(module, value, counts)

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, QCFS):
            name = spiking_name(module)
            lam = module.get_variable("params", "lam")
            if lam is None:
                raise ValueError(f"QCFS layer {name} has no 'lam' parameter in variables")
            out, spikes, v0 = _spiking_layer(
                name, args[0], lam, given.get(name), batch=batch, steps=steps, presim=presim,
                iterations=iterations, want_spikes=on_layer is not None, fused=fused,
                surrogate=surrogate, method=method)
            places[name] = _keep(module, v0, counts)
            if on_layer is not None:
                record(name, module, on_layer(name, args[0], lam, spikes))
            return out
        if on_linear is not None and module.has_variable("params", "kernel"):
            name = linear_name(module)
            record(name, module, on_linear(name, module, args[0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits, state = model.apply(variables, images, mutable=[SOWN], **apply_kwargs)
    potentials: Potentials = {name: _read(state, place) for name, place in places.items()}
    records = {name: _read(state, place) for name, place in record_places.items()}
    if not potentials:
        raise ValueError("model has no QCFS layers: nothing to convert to spiking neurons")
    unknown = set(given) - set(potentials)
    if unknown:
        raise ValueError(f"initial_potentials names unknown layers: {sorted(unknown)}; "
                         f"the layers are {sorted(potentials)}")
    def per_step(path, out):   # [B*S, ...] -> [S, B, ...]
        out = jnp.asarray(out)
        where = "the model's output" + jax.tree_util.keystr(path)
        if out.ndim < 1 or out.shape[0] not in (batch, batch * steps):
            raise ValueError(f"{where} has shape {out.shape}: every output of the model "
                             f"needs the batch axis first ({batch} examples)")
        if not is_time_batched(out, batch, steps, where):   # depends on no spiking layer
            return jnp.broadcast_to(out, (steps,) + out.shape)
        return to_steps(out, batch, steps)

    return jax.tree_util.tree_map_with_path(per_step, logits), potentials, records


def _micro_batched(run, images: jax.Array, initial_potentials: Mapping[str, jax.Array] | None,
                   micro_batch: int) -> tuple[jax.Array, Potentials]:
    """``run(images [m, ...], initial_potentials) -> (outputs [S, m, ...], potentials, _)``
    over strided chunks of m examples with ``lax.map``; returns whole-batch results."""
    batch = images.shape[0]
    chunks = -(-batch // micro_batch)
    padded = chunks * micro_batch

    def split(a):   # [B, ...] -> [chunks, m, ...], chunk c = examples c, c + chunks, ...
        a = jnp.pad(a, [(0, padded - batch)] + [(0, 0)] * (a.ndim - 1))
        return jnp.swapaxes(a.reshape((micro_batch, chunks) + a.shape[1:]), 0, 1)

    def merge(a):   # [chunks, m, ...] -> [B, ...]
        return jnp.swapaxes(a, 0, 1).reshape((padded,) + a.shape[2:])[:batch]

    given = jax.tree_util.tree_map(split, dict(initial_potentials or {}))
    outputs, potentials = lax.map(lambda args: run(args[0], args[1])[:2], (split(images), given))
    outputs = jax.tree_util.tree_map(                                    # [S, B, ...]
        lambda out: jnp.moveaxis(merge(jnp.moveaxis(out, 2, 1)), 0, 1), outputs)
    return outputs, jax.tree_util.tree_map(merge, potentials)


# ---------------------------------------------------------------------------
# The public entry point.

def _simulate_steps(model, variables, images, initial_potentials, *, time_steps, presim,
                    iterations, return_potentials, micro_batch=None, surrogate=DEFAULT,
                    apply_kwargs=(), check=True, unroll=True, method=IF):
    steps = method.steps(time_steps, presim)
    first = presim if method.name == "srp" else 0
    outputs, potentials = run_snn(model, variables, images, steps=steps, presim=presim,
                                  iterations=iterations, initial_potentials=initial_potentials,
                                  micro_batch=micro_batch, surrogate=surrogate,
                                  apply_kwargs=dict(apply_kwargs), check=check, unroll=unroll,
                                  method=method)
    outputs = jax.tree_util.tree_map(lambda out: out[first:first + time_steps], outputs)
    return outputs, (potentials if return_potentials else None)


STATIC_ARGNAMES = ("model", "time_steps", "presim", "iterations", "return_potentials",
                   "micro_batch", "surrogate", "apply_kwargs", "check", "unroll", "method")


def _simulate_jit():
    """The jitted :func:`_simulate_steps` for :func:`cosjax.target.current`."""
    return _simulate_jit_for(target.current())


@functools.cache
def _simulate_jit_for(platform: str):
    """The jitted :func:`_simulate_steps` for ``platform``: its compiler
    options, and traced with ``platform`` in force (a function of its own per
    platform, so that JAX's trace cache cannot hand one platform's program
    to another)."""
    @functools.wraps(_simulate_steps)   # the signature, for static_argnames
    def steps_on_platform(*args, **kwargs):
        with target.use(platform):
            return _simulate_steps(*args, **kwargs)

    return xla_options.jit(steps_on_platform, platform=platform,
                           static_argnames=STATIC_ARGNAMES)


def _traced(*trees: Any) -> bool:
    """Whether any leaf is a tracer (we are inside the user's jit/grad/vmap)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def simulate(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
             time_steps: int, presim: int = 0, iterations: int = 1,
             initial_potentials: Mapping[str, jax.Array] | None = None,
             return_potentials: bool = False, micro_batch: int | None = None,
             surrogate: Surrogate = DEFAULT, apply_kwargs: Mapping[str, Any] | None = None,
             check: bool = True, unroll: bool = True, method: str | Method = "if"):
    """Runs the SNN converted from a QCFS model, with offset-spike calibration.

    Every QCFS layer (every call of one) becomes IF neurons with threshold
    ``lam``; ``presim`` (rho) > 0 calibrates each neuron's initial potential
    per example with ``iterations`` (k) rounds of the COS shift rule.
    S = max(T, rho) steps are simulated; the outputs of steps 1..T are
    returned. Called at top level, it is jit-compiled once per (model, input
    shape and dtype, settings) with :func:`cosjax.xla_options.jit`; inside
    the user's ``jax.jit``/``grad``/``vmap``/``shard_map`` (any argument a
    tracer) it is traced into the user's program instead, where the CPU
    compiler options cannot apply (pass them to the outer ``jax.jit``).

    Args:
      model: a Flax module whose activations are :class:`cosjax.QCFS`.
      variables: its variables (``params`` and ``batch_stats``).
      images: the input ``[B, ...]`` (e.g. ``[B, H, W, C]`` or ``[B, features]``),
        fed unchanged at every step (direct coding).
      time_steps: T >= 1.
      presim: rho >= 0; 0 is plain QCFS conversion (v0 = 1/2).
      iterations: k >= 1 rounds of calibration (1 is the reference; k > 1
        needs rho > 0).
      initial_potentials: optional ``{layer: v0 [B, ...]}`` to use instead of
        calibrating those layers (e.g. potentials returned by an earlier call).
      return_potentials: also return the initial potentials used.
      micro_batch: optional m: evaluate the batch in chunks of m examples
        inside the one jitted call (see :func:`run_snn`); bounds activation
        memory by ``S * m`` inputs per layer with identical results.
      surrogate: the spike function's derivative under ``jax.grad``.
      apply_kwargs: keyword arguments of ``model.apply`` (static: hashable
        values, e.g. ``{"train": False}``).
      check: verify convertibility (:func:`cosjax.check_convertible`) once
        per compilation; False skips it (experts: a non-convertible model
        then gives wrong outputs silently).
      unroll: see :func:`run_snn`.
      method: the conversion method (:mod:`cosjax.methods`; default ``"if"``,
        plain and COS). ``"srp"``: presim is its tau, tau + T steps are
        simulated and steps tau+1..tau+T returned. ``"parallel"``: the
        output of every step depends on all T steps, so only ``outputs``
        summed over all T is that of a T-step run.
    Returns:
      ``outputs [T, B, ...]`` (per-step outputs of the last layer; NaN for an
      example whose input is not finite; the model's output structure, each
      leaf ``[T, B, ...]``, for a tuple or dict output), or
      ``(outputs, {layer: v0 [B, ...]})`` when ``return_potentials``.
    """
    check_snn_args(time_steps, presim, iterations)
    method = resolve_method(method)
    method.check(presim, iterations)
    check_input_batch(images)
    check_micro_batch(micro_batch)
    initial_potentials = check_initial_potentials(initial_potentials)
    apply_kwargs = tuple(sorted(dict(apply_kwargs or {}).items()))
    try:
        hash(apply_kwargs)
    except TypeError as err:
        raise ValueError(f"apply_kwargs values must be hashable (static), got {apply_kwargs}; "
                         "for array arguments call run_snn inside your own jax.jit") from err
    args = (model, variables, images, dict(initial_potentials) if initial_potentials else None)
    kwargs = dict(time_steps=time_steps, presim=presim, iterations=iterations,
                  return_potentials=return_potentials, micro_batch=micro_batch,
                  surrogate=check_surrogate(surrogate), apply_kwargs=apply_kwargs, check=check,
                  unroll=unroll, method=method)
    if _traced(args[1:]):
        outputs, potentials = _simulate_steps(*args, **kwargs)
    else:
        with target.use(target.platform_of(args[1:])):
            outputs, potentials = _simulate_jit()(*args, **kwargs)
    return (outputs, potentials) if return_potentials else outputs


def correct_per_step(outputs: jax.Array, labels: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
    """Correct predictions of the accumulated output at every step.

    Args:
      outputs: per-step outputs ``[T, B, classes]``.
      labels: integer labels ``[B]``.
      mask: optional ``[B]`` booleans; False entries (padding) never count.
    Returns:
      ``[T]`` int32: at index t-1, how many examples the sum of outputs over
      steps 1..t classifies correctly (the argmax of sum and mean agree). An
      example whose accumulated output holds a NaN is never correct.
    """
    outputs, labels = jnp.asarray(outputs), jnp.asarray(labels)
    if outputs.ndim != 3:
        raise ValueError(f"outputs must be per-step outputs [T, B, classes], got shape "
                         f"{outputs.shape}")
    batch = outputs.shape[1]
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers of shape [B] = ({batch},), got "
                         f"{labels.dtype} {labels.shape}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (batch,):
            raise ValueError(f"mask must have shape [B] = ({batch},), got {mask.shape}")

    def step(total, out_t):
        total = total + out_t
        return total, (jnp.argmax(total, axis=-1), jnp.isfinite(total).all(axis=-1))

    _, (predictions, finite) = lax.scan(step, jnp.zeros_like(outputs[0]), outputs)
    correct = (predictions == labels[None, :]) & finite
    if mask is not None:
        correct = correct & mask[None, :].astype(bool)
    return correct.sum(axis=1, dtype=jnp.int32)
