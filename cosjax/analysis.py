"""Statistics of a converted SNN: offset spikes, firing rates, synaptic operations, energy.

One jitted simulation pass per setting (T, rho, k) yields, per batch (the
pass is :func:`cosjax.run_snn` with its ``on_layer`` and ``on_linear``
hooks):

* **Offset spikes** of every spiking layer over a window of W steps (steps
  1..W, W = T by default). The offset of a neuron is its actual spike count
  minus the count its QCFS activation demands on the same input::

      xbar    = mean(x_1 .. x_W)                        # the SNN's own input to the layer
      demand  = clip(floor(xbar / lam * W + 1/2), 0, W) # W * qcfs(xbar, lam, W) / lam
      offset  = sum(s_1 .. s_W) - demand

  i.e. the QCFS activation evaluated with W quantisation levels on the
  layer's time-averaged raw input, which makes the demanded count an integer
  for every W. This is the definition of the reference's (dead) analysis code,
  which builds ``QCFS(up=threshold, t=presim_len)`` and compares
  ``(out / threshold - rate) * presim_len`` with 0, 1, 2, 3; its sign is the
  opposite of ours: here +1 means one spike too many. With reset by
  subtraction, ``v_W = v_0 + W * xbar / lam - n`` (threshold units), so for
  ``v_0 = 1/2`` the offset is 0 whenever ``0 <= v_W < 1``; otherwise the
  neuron fired too often (``v_W < 0``) or too rarely (``v_W >= 1``) unless
  its demand is clipped at 0 or W. In particular a layer whose input is
  constant over time (the first spiking layer) has no offsets without
  calibration. Offsets are binned as :data:`OFFSET_BINS`: 0, +1, -1, +2,
  -2, |offset| >= 3.
* **Firing rates**: spikes per neuron per time step, over steps 1..t.
* **Synaptic operations** of every linear layer -- every call of a module
  owning a ``kernel`` parameter (``cosjax.layers.Conv2d``, ``flax.linen``'s
  ``Conv``, ``Dense``, ``ConvTranspose``, ``DenseGeneral``, ...), its fan-out
  read from its traced program (:func:`fan_out`) -- counted at steps 1..t:

  - a layer whose input varies with time (every layer after the first
    spiking layer) performs event-driven **accumulates (ACs)**: each nonzero
    input element costs one addition per outgoing synapse, so
    ``ACs = sum over steps and input elements of (x != 0) * fan_out``. Between
    spikes and the next linear layer there may be average pooling, eval-mode
    BN or residual sums; the linear layer's input is then not binary
    (an average of spikes, a sum of spike maps times thresholds), and each
    nonzero input element still counts as one event (pooling and residual
    sums are not counted separately, and BN is assumed folded into the
    preceding linear layer; biases are not counted).
  - a layer whose input is the analog image (in front of the first spiking
    layer) performs **multiply-accumulates (MACs)**. The image is constant
    over time (direct coding), so its output is computed once and reused at
    every step -- exactly what :func:`cosjax.simulate` does -- and these MACs
    are counted **once per sample** by default. ``analog_every_step=True`` in
    :func:`summarize` counts them at every step instead (a chip that
    recomputes its first layer each step).
  - the ANN performs **MACs** at every linear layer: every input element
    times its fan-out, the dense count.

  ``fan_out`` is each input element's exact number of outgoing synapses
  (borders, strides and padding included), computed in closed form; it
  equals the transposed convolution of an all-ones output with an all-ones
  kernel. The pre-simulation of COS reuses the stored inputs x_1..x_rho (as
  :func:`cosjax.simulate` does): it adds rho IF updates per neuron and no
  synaptic operations when rho <= T; when rho > T the operations of steps
  T+1..rho, needed only to calibrate, are not counted (analyse with
  ``time_steps = rho`` to include them).
* **Energy** per inference: 0.9 pJ per AC and 4.6 pJ per MAC, the 32-bit
  floating-point add (0.9 pJ) and add + multiply (0.9 + 3.7 pJ) of a 45 nm
  CMOS process from M. Horowitz, "Computing's energy problem (and what we can
  do about it)", ISSCC 2014, pp. 10-14. Memory access is not counted.

Usage::

    stats = analyze_batches(model, variables, [(images, labels, mask), ...],
                            time_steps=8, presim=4, iterations=1)   # NumPy counts
    summary = summarize(stats)          # fractions, rates, operations, energy (JSON-able)

or, batch by batch, ``total = add_stats(total, analyze_batch(...))``.

All counts are exact integers (int32 per sample and step inside the jitted
pass, int64 once summed on the host).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from cosjax import xla_options
from cosjax.checks import check_int
from cosjax.convertible import _name_stack, _sub_jaxpr, _trace
from cosjax.methods import Method, resolve_method
from cosjax.qcfs import qcfs
from cosjax.simulate import (
    check_initial_potentials,
    check_input_batch,
    check_snn_args,
    correct_per_step,
    is_time_batched,
    run_snn,
    to_steps,
)

__all__ = [
    "ENERGY_AC_PJ", "ENERGY_MAC_PJ", "OFFSET_BINS", "Stats", "add_stats", "analyze_batch",
    "analyze_batches", "energy_pj", "fan_out", "latency_comparison", "network_profile",
    "offset_fractions", "summarize"
]

# Energy per operation in picojoules (45 nm CMOS, 32-bit float; Horowitz, ISSCC 2014).
ENERGY_AC_PJ = 0.9
ENERGY_MAC_PJ = 4.6

OFFSET_BINS: tuple[str, ...] = ("0", "+1", "-1", "+2", "-2", "|o|>=3")

Stats = dict[str, Any]


# ---------------------------------------------------------------------------
# Fan-out maps and the static profile of a network.

def fan_out(module: nn.Module, input_shape: Sequence[int], dtype: Any = jnp.float32) -> np.ndarray:
    """Each input element's number of outgoing synapses in a linear layer.

    Read from the layer's own traced program, so any Flax layer with a
    ``kernel`` parameter is covered (``flax.linen.Conv``, ``Dense``,
    ``ConvTranspose``, ``DenseGeneral``, :class:`cosjax.layers.Conv2d`, with
    any stride, padding, dilation or feature groups): the layer is applied
    with an all-ones kernel (other parameters zero) and transposed onto an
    all-ones output, ``fan = J^T 1``. For a convolution this is the transposed
    convolution of ones with ones (borders, strides and padding included);
    for a dense layer every element feeds ``features`` outputs.

    Args:
      module: a Flax module owning a ``kernel`` parameter (bound or not).
      input_shape: one example's input shape, e.g. ``(H, W, C)`` or ``(F,)``.
      dtype: the input dtype.
    Returns:
      ``int64 [*input_shape]``.
    """
    shape = (1,) + tuple(int(d) for d in input_shape)
    module = module.clone(parent=None)
    x = jnp.zeros(shape, dtype)
    with jax.ensure_compile_time_eval():
        shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
        if "kernel" not in shapes.get("params", {}):
            raise ValueError(f"no fan-out rule for {type(module).__name__}: it owns no "
                             "'kernel' parameter")
        ones = jax.tree_util.tree_map_with_path(
            lambda path, a: (jnp.ones if jax.tree_util.keystr(path) == "['params']['kernel']"
                             else jnp.zeros)(a.shape, a.dtype), shapes)
        out, transpose = jax.vjp(lambda x: module.apply(ones, x), x)
        (fan,) = transpose(jnp.ones_like(out))
    return np.rint(np.asarray(fan[0], np.float64)).astype(np.int64)


def network_profile(model: nn.Module, variables: Mapping[str, Any],
                    image_shape: Sequence[int],
                    apply_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Static facts of a QCFS network, in call order (no simulation).

    Traces :func:`cosjax.run_snn` with its hooks on one example: every
    spiking layer (QCFS call) and every linear layer (a call of a module
    owning a ``kernel`` parameter) is listed under its call-site name.

    Args:
      image_shape: one input's shape, e.g. ``(H, W, C)``.
      apply_kwargs: keyword arguments of ``model.apply``.
    Returns:
      ``{"spiking": {layer: {"neurons": int}},
      "linear": {layer: {"inputs": int, "ann_macs": int, "analog": bool}},
      "fan_out": {layer: int64 [*input shape]}}``
      where ``neurons`` and ``inputs`` are per example, ``ann_macs`` is the
      ANN's MACs per example (sum of the fan-out map) and ``analog`` says the
      layer's input is constant over time (it sits in front of the spiking
      layers); ``fan_out`` holds the maps of the other layers.
    """
    spiking: dict[str, dict[str, Any]] = {}
    linear: dict[str, dict[str, Any]] = {}
    found: dict[str, tuple[nn.Module, tuple[int, ...], Any]] = {}

    def on_layer(name, x, lam, spikes):
        spiking[name] = {"neurons": int(np.prod(x.shape[1:]))}

    def on_linear(name, module, x):
        found[name] = (module.clone(parent=None), tuple(x.shape[1:]), x.dtype)
        linear[name] = {"inputs": int(np.prod(x.shape[1:])),
                        "analog": not is_time_batched(x, 1, 2, f"linear layer {name}")}

    image = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    jax.eval_shape(lambda v, x: run_snn(model, v, x, steps=2, presim=0, iterations=1,
                                        on_layer=on_layer, on_linear=on_linear, check=False,
                                        apply_kwargs=apply_kwargs), variables, image)
    _check_counted(model, variables, image, apply_kwargs, linear)
    fans = {}
    for name, (module, shape, dtype) in found.items():
        fan = fan_out(module, shape, dtype)
        linear[name]["ann_macs"] = int(fan.sum())
        if not linear[name]["analog"]:
            fans[name] = fan
    return {"spiking": spiking, "linear": linear, "fan_out": fans}


LINEAR_PRIMITIVES = ("dot_general", "conv_general_dilated")


def _linear_operations(jaxpr, data: list[bool], outer: tuple[str, ...],
                       found: dict[str, int]) -> None:
    """Counts, per Flax module path, the ``dot_general`` and convolution
    equations of ``jaxpr`` with an operand that depends on the input
    (``data`` says which inputs do), descending into called jaxprs
    (``outer``: the name stack of the equation that calls ``jaxpr``)."""
    depends = dict(zip(jaxpr.invars, data, strict=True))

    def of(v):
        return not isinstance(v, jex_core.Literal) and depends.get(v, False)

    for eqn in jaxpr.eqns:
        ins = [of(v) for v in eqn.invars]
        stack = _name_stack(eqn, outer)
        where = "/".join(stack[1:])                      # the module path
        inner = _sub_jaxpr(eqn)
        if inner is not None:
            _linear_operations(inner, ins, stack, found)
        else:
            for value in eqn.params.values():
                for sub in (value if isinstance(value, (tuple, list)) else (value,)):
                    sub = getattr(sub, "jaxpr", sub)
                    if isinstance(sub, jex_core.Jaxpr):
                        _linear_operations(sub, [any(ins)] * len(sub.invars), stack, found)
        if eqn.primitive.name in LINEAR_PRIMITIVES and any(ins):
            found[where] = found.get(where, 0) + 1
        for v in eqn.outvars:
            depends[v] = any(ins)


def _check_counted(model, variables, image, apply_kwargs, linear) -> None:
    """Raises ``ValueError`` naming the first module whose activation-dependent
    ``dot_general`` or convolution equations (read from the traced program)
    are not all calls of a module owning a ``kernel`` parameter, the layers
    this analysis counts: their operations would be missing from every total."""
    jaxpr = _trace(model, variables, image, dict(apply_kwargs or {}))
    n_vars = len(jax.tree_util.tree_leaves(variables))
    found: dict[str, int] = {}
    _linear_operations(jaxpr.jaxpr, [False] * n_vars + [True] * (len(jaxpr.jaxpr.invars) - n_vars),
                       (), found)
    calls: dict[str, int] = {}
    for name in linear:
        base = name.split("#")[0]
        calls[base] = calls.get(base, 0) + 1
    for where, count in found.items():
        if count != calls.get(where, 0):
            raise ValueError(
                f"cannot count the synaptic operations of module {where or '(top level)'}: it "
                f"computes {count} matrix product(s) or convolution(s) of activations, of which "
                f"{calls.get(where, 0)} are calls of a layer owning a 'kernel' parameter (the "
                "layers cosjax.analysis counts, e.g. flax.linen.Dense/Conv); a weight under "
                "another name (self.param('w', ...)) is not counted: name it 'kernel', or use a "
                "flax.linen layer")


# ---------------------------------------------------------------------------
# The jitted pass.

def _offset_bins(offset: jax.Array) -> jax.Array:
    """``offset [B, ...]`` (integer-valued) -> per-example counts ``[B, 6]`` int32
    over the bins of :data:`OFFSET_BINS` (0, +1, -1, +2, -2, |o| >= 3)."""
    flat = offset.reshape(offset.shape[0], -1).astype(jnp.int32)
    size = jnp.abs(flat)
    index = jnp.where(size >= 3, 5, 2 * size - (flat > 0).astype(jnp.int32))
    return (index[:, :, None] == jnp.arange(len(OFFSET_BINS))).sum(axis=1, dtype=jnp.int32)


def _batch_stats(model, variables, images, mask, labels, fans, initial_potentials=None, *,
                 time_steps, presim, iterations, window, method, apply_kwargs=()):
    """The per-batch counts, with :func:`cosjax.run_snn`'s hooks: ``on_layer``
    for spikes, events and (IF neurons) offsets, ``on_linear`` for synaptic
    operations. Per-step counts cover ``first + T`` steps, ``first`` being
    SRP's tau pre-simulation steps (0 for every other method)."""
    batch = images.shape[0]
    first = presim if method.name == "srp" else 0
    steps = max(method.steps(time_steps, presim), window if method.name == "if" else 1)
    counted = first + time_steps
    weight = mask.astype(jnp.int32)                      # [B]

    def per_step(a):                                     # [S, B, ...] -> [first + T, B]
        return a[:counted].reshape(counted, batch, -1).sum(axis=2, dtype=jnp.int32) * weight[None, :]

    def on_layer(name, x, lam, spikes):                  # returned: run_snn's records
        counts = {"spikes": per_step(jnp.abs(spikes)),   # a group's n member spikes count n
                  "events": per_step(spikes != 0)}       # ... and one event
        if method.name == "if":
            lam = lam.astype(x.dtype)
            if is_time_batched(x, batch, steps, f"spiking layer {name}"):
                xbar = to_steps(x, batch, steps)[:window].mean(axis=0)
            else:                                        # constant over time: [B, ...]
                xbar = x
            demand = window * qcfs(xbar, lam, window) / lam   # an integer count in [0, W]
            actual = spikes[:window].sum(axis=0)         # signed spikes: the net count
            counts["offsets"] = _offset_bins(actual - jnp.round(demand)) * weight[:, None]
        return counts

    def on_linear(name, module, x):
        if name not in fans:                             # analog: counted as MACs, once
            return None
        if not is_time_batched(x, batch, steps, f"linear layer {name}"):
            raise ValueError(f"linear layer {name} got a constant-over-time input where "
                             "time-batched spikes were expected")
        nonzero = to_steps(x, batch, steps)[:counted] != 0
        return {"acs": per_step(jnp.where(nonzero, fans[name], 0))}

    outputs, _, records = run_snn(model, variables, images, steps=steps, presim=presim,
                                  iterations=iterations, initial_potentials=initial_potentials,
                                  on_layer=on_layer, on_linear=on_linear,
                                  apply_kwargs=dict(apply_kwargs), method=method,
                                  return_records=True)

    def table(key):                                      # {layer: records[layer][key]}
        return {name: r[key] for name, r in records.items() if key in r}

    correct = None if labels is None else correct_per_step(outputs[first:counted], labels, mask)
    return {"spikes": table("spikes"), "events": table("events"), "offsets": table("offsets"),
            "acs": table("acs"), "correct": correct, "samples": weight.sum()}


@functools.cache
def _batch_stats_jit():
    """The jitted :func:`_batch_stats` (created on first use)."""
    return xla_options.jit(_batch_stats, static_argnames=(
        "model", "time_steps", "presim", "iterations", "window", "method", "apply_kwargs"))


def analyze_batch(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
                  time_steps: int, presim: int = 0, iterations: int = 1,
                  window: int | None = None, mask: jax.Array | None = None,
                  labels: jax.Array | None = None,
                  profile: Mapping[str, Any] | None = None,
                  apply_kwargs: Mapping[str, Any] | None = None,
                  initial_potentials: Mapping[str, jax.Array] | None = None,
                  method: str | Method = "if") -> Stats:
    """Offset spikes, spike counts and synaptic operations of one batch.

    Runs the SNN of :func:`cosjax.simulate` once (jit-compiled per model,
    input shape, T, rho, k, W and method) on S = max(T, rho, W) steps for IF
    neurons, on ``method.steps(T, presim)`` steps for the other methods.

    Args:
      model, variables: a QCFS model and its variables.
      images: the input batch ``[B, ...]``.
      time_steps: T >= 1: spike counts, operations and accuracy cover steps 1..T
        (for SRP, the T steps after its tau pre-simulation steps, whose
        spikes and operations are kept apart as ``presim_*``).
      presim: rho >= 0 (0: plain conversion, v0 = 1/2); SRP's tau.
      iterations: k >= 1 rounds of calibration.
      window: W >= 1, the offset window (steps 1..W); default T. IF neurons
        only (signed ones included: their net count); other methods have no
        offsets (``offsets`` None).
      mask: optional ``[B]`` booleans; False rows (padding) count nowhere.
      labels: optional ``[B]`` integer labels; adds ``correct``.
      profile: :func:`network_profile` of this model and input shape, to
        skip recomputing it for every batch.
      apply_kwargs: keyword arguments of ``model.apply`` (hashable values).
      initial_potentials: optional ``{layer: v0 [B, ...]}`` replacing 1/2 as
        in :func:`cosjax.simulate` (e.g. static potentials broadcast over
        the batch by :func:`cosjax.static_calibration.batch_potentials`).
      method: the neuron of :func:`cosjax.run_snn` (``"if"``, ``"srp"``,
        ``"group"``, ``"parallel"`` or a :class:`cosjax.Method`). A parallel
        run of T steps is not the prefix of a longer one: its figures hold
        at T only.
    Returns:
      A dict of host (NumPy) values, summed over the valid examples::

        settings: {time_steps, presim, iterations, window, method (its label)}
        samples:  int
        correct:  int64 [T] correct predictions at t = 1..T, or None
        spiking:  {layer: {neurons: int (per example),
                           spikes: int64 [T] (per step; |s|: a group neuron's
                                   n member spikes in a step are n, a signed -1 is 1),
                           events: int64 [T] (neuron-steps that send anything),
                           presim_spikes, presim_events: int (SRP's tau steps; else 0),
                           offsets: int64 [6] (neurons per bin of OFFSET_BINS) or None}}
        linear:   {layer: {inputs: int, ann_macs: int (per example), analog: bool,
                           acs: int64 [T] (per step; zeros for analog layers),
                           presim_acs: int (SRP's tau steps; else 0)}}

      Combine batches with :func:`add_stats`; read them with :func:`summarize`.
    """
    check_snn_args(time_steps, presim, iterations)
    check_input_batch(images)
    initial_potentials = check_initial_potentials(initial_potentials)
    method = resolve_method(method)
    method.check(presim, iterations)
    window = time_steps if window is None else window
    check_int("window (W)", window, 1)
    if method.name != "if":
        window = time_steps                              # no offsets: W plays no part
    batch = images.shape[0]
    mask = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask)
    if mask.shape != (batch,):
        raise ValueError(f"mask must have shape [B] = ({batch},), got {mask.shape}")
    if labels is not None:
        labels = jnp.asarray(labels)
        if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be integers of shape [B] = ({batch},), got "
                             f"{labels.dtype} {labels.shape}")
    if profile is None:
        profile = network_profile(model, variables, images.shape[1:], apply_kwargs)
    fans = {name: jnp.asarray(fan, jnp.int32) for name, fan in profile["fan_out"].items()}
    given = None if initial_potentials is None else dict(initial_potentials)
    raw = _batch_stats_jit()(model, variables, images, mask.astype(bool), labels, fans, given,
                             time_steps=time_steps, presim=presim, iterations=iterations,
                             window=window, method=method,
                             apply_kwargs=tuple(sorted(dict(apply_kwargs or {}).items())))
    raw = jax.device_get(raw)
    first = presim if method.name == "srp" else 0

    def total(a):                                        # [first + T, B] -> ([T], tau-step sum)
        a = np.asarray(a, np.int64).sum(axis=-1)
        return a[first:], int(a[:first].sum())

    spiking = {}
    for name, info in profile["spiking"].items():
        spikes, presim_spikes = total(raw["spikes"][name])
        events, presim_events = total(raw["events"][name])
        offsets = raw["offsets"].get(name)
        spiking[name] = {"neurons": info["neurons"], "spikes": spikes, "events": events,
                         "presim_spikes": presim_spikes, "presim_events": presim_events,
                         "offsets": None if offsets is None else
                         np.asarray(offsets, np.int64).sum(axis=0)}
    linear = {}
    for name, info in profile["linear"].items():
        acs, presim_acs = ((np.zeros(time_steps, np.int64), 0) if info["analog"]
                           else total(raw["acs"][name]))
        linear[name] = {**info, "acs": acs, "presim_acs": presim_acs}
    return {
        "settings": {"time_steps": time_steps, "presim": presim, "iterations": iterations,
                     "window": window, "method": method.label},
        "samples": int(raw["samples"]),
        "correct": None if raw["correct"] is None else np.asarray(raw["correct"], np.int64),
        "spiking": spiking,
        "linear": linear,
    }


def analyze_batches(model: nn.Module, variables: Mapping[str, Any],
                    batches: Iterable[tuple[jax.Array, jax.Array | None, jax.Array | None]],
                    **settings: Any) -> Stats:
    """:func:`analyze_batch` over ``(images, labels, mask)`` batches, summed.

    ``labels`` and ``mask`` may be None; ``settings`` are the keyword
    arguments of :func:`analyze_batch` (time_steps, presim, iterations, window).
    """
    total, profile = None, None
    for images, labels, mask in batches:
        check_input_batch(images)
        if profile is None:
            profile = network_profile(model, variables, images.shape[1:],
                                      settings.get("apply_kwargs"))
        total = add_stats(total, analyze_batch(model, variables, images, labels=labels,
                                               mask=mask, profile=profile, **settings))
    if total is None:
        raise ValueError("analyze_batches got no batches")
    return total


def add_stats(a: Stats | None, b: Stats) -> Stats:
    """Sums two :func:`analyze_batch` results of the same model and setting
    (``a = None`` returns ``b``)."""
    if a is None:
        return b
    if a["settings"] != b["settings"]:
        raise ValueError(f"cannot add statistics of different settings: {a['settings']} "
                         f"vs {b['settings']}")
    if list(a["spiking"]) != list(b["spiking"]) or list(a["linear"]) != list(b["linear"]):
        raise ValueError("cannot add statistics of different networks (layers differ)")
    if (a["correct"] is None) != (b["correct"] is None):
        raise ValueError("cannot add statistics with and without labels")

    def summed(x, y):
        return {key: (value if key in ("neurons", "inputs", "ann_macs", "analog") or value is None
                      else value + y[key]) for key, value in x.items()}

    return {
        "settings": dict(a["settings"]),
        "samples": a["samples"] + b["samples"],
        "correct": None if a["correct"] is None else a["correct"] + b["correct"],
        "spiking": {n: summed(s, b["spiking"][n]) for n, s in a["spiking"].items()},
        "linear": {n: summed(layer, b["linear"][n]) for n, layer in a["linear"].items()},
    }


# ---------------------------------------------------------------------------
# Reading the statistics.

def offset_fractions(counts: Sequence[int] | np.ndarray) -> list[float]:
    """Bin counts ``[6]`` (see :data:`OFFSET_BINS`) -> fractions summing to 1."""
    counts = np.asarray(counts, np.float64)
    if counts.shape != (len(OFFSET_BINS),):
        raise ValueError(f"offset counts must have shape ({len(OFFSET_BINS)},), got {counts.shape}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("offset counts are all zero (no valid samples)")
    return (counts / total).tolist()


def energy_pj(acs: float, macs: float) -> float:
    """Energy in picojoules of ``acs`` accumulates and ``macs`` multiply-accumulates
    (0.9 pJ and 4.6 pJ: 45 nm CMOS, 32-bit float, Horowitz ISSCC 2014)."""
    return ENERGY_AC_PJ * float(acs) + ENERGY_MAC_PJ * float(macs)


def summarize(stats: Stats, *, time_steps: int | None = None,
              analog_every_step: bool = False) -> dict[str, Any]:
    """Per-layer and total figures from (summed) :func:`analyze_batch` results.

    Args:
      stats: an :func:`analyze_batch` / :func:`add_stats` result.
      time_steps: t, the number of steps 1..t the rates, operations and
        energy cover (default and maximum: the T of ``stats``; for parallel
        neurons T only). SRP's tau pre-simulation steps are added to them.
        Offsets always cover the analysed window W.
      analog_every_step: count the MACs of layers fed by the analog image at
        each of the t steps instead of once per sample.
    Returns:
      A JSON-serialisable dict (per sample means; Python floats and lists)::

        samples, time_steps, window, presim, iterations, method,
        accuracy:     [acc at t = 1..T] or None (parallel neurons: None before T)
        offset_bins:  OFFSET_BINS
        offsets:      {spiking layer: [6 fractions summing to 1]}, or None
                      (methods other than IF neurons)
        firing_rate:  {spiking layer: spikes per neuron per step over the
                       latency steps (SRP: tau + t; otherwise 1..t)}
        synops:       {linear layer: {snn_acs, snn_macs, ann_macs}}  (per sample)
        totals:       {snn_acs, snn_macs, ann_macs, snn_energy_pj, ann_energy_pj,
                       energy_ratio (snn / ann; None with no linear layer),
                       firing_rate (all neurons),
                       spikes, events (per sample), latency (presim + t)}
    """
    settings = stats["settings"]
    method = settings.get("method", "if")
    t_max = settings["time_steps"]
    t = t_max if time_steps is None else time_steps
    check_int("time_steps", t, 1, t_max)
    if method == "parallel" and t != t_max:
        raise ValueError(f"a parallel run of T={t_max} steps is not the prefix of a longer one: "
                         f"its figures hold at T={t_max} only, not at t={t}")
    first = settings["presim"] if method == "srp" else 0
    n = stats["samples"]
    if n <= 0:
        raise ValueError("statistics hold no valid samples")

    def spikes_of(s, key):
        return float(s[key][:t].sum()) + s.get(f"presim_{key}", 0)

    firing = {name: spikes_of(s, "spikes") / (s["neurons"] * n * (first + t))
              for name, s in stats["spiking"].items()}
    all_spikes = sum(spikes_of(s, "spikes") for s in stats["spiking"].values())
    all_events = sum(spikes_of(s, "events") for s in stats["spiking"].values())
    all_neurons = sum(s["neurons"] for s in stats["spiking"].values())
    synops = {}
    for name, layer in stats["linear"].items():
        macs = layer["ann_macs"] * (t if analog_every_step else 1) if layer["analog"] else 0
        acs = float(layer["acs"][:t].sum()) + layer.get("presim_acs", 0)
        synops[name] = {"snn_acs": acs / n, "snn_macs": float(macs),
                        "ann_macs": float(layer["ann_macs"])}
    totals = {key: sum(s[key] for s in synops.values())
              for key in ("snn_acs", "snn_macs", "ann_macs")}
    totals["snn_energy_pj"] = energy_pj(totals["snn_acs"], totals["snn_macs"])
    totals["ann_energy_pj"] = energy_pj(0.0, totals["ann_macs"])
    totals["energy_ratio"] = (totals["snn_energy_pj"] / totals["ann_energy_pj"]
                              if totals["ann_energy_pj"] > 0 else None)
    totals["firing_rate"] = all_spikes / (all_neurons * n * (first + t))
    totals["spikes"], totals["events"] = all_spikes / n, all_events / n
    totals["latency"] = settings["presim"] + t
    correct = stats["correct"]
    accuracy = None if correct is None else (np.asarray(correct, np.float64) / n).tolist()
    if accuracy is not None and method == "parallel":
        accuracy = [None] * (t_max - 1) + accuracy[-1:]
    offsets = {name: offset_fractions(s["offsets"]) for name, s in stats["spiking"].items()
               if s["offsets"] is not None}
    return {
        "samples": n, "time_steps": t, "window": settings["window"],
        "presim": settings["presim"], "iterations": settings["iterations"], "method": method,
        "accuracy": accuracy,
        "offset_bins": list(OFFSET_BINS),
        "offsets": offsets or None,
        "firing_rate": firing,
        "synops": synops,
        "totals": totals,
    }


def latency_comparison(plain: Sequence[float], cos: Sequence[float], presim: int) -> dict[str, Any]:
    """Accuracy against total latency L for plain conversion and COS.

    COS with pre-simulation rho spends rho steps before its T reported steps:
    its accuracy at T is placed at latency ``L = rho + T``, beside plain
    conversion at ``T = L``. (Pass rho times the number of layers as
    ``presim`` to model a pipeline that calibrates its layers one after the
    other.)

    Args:
      plain: plain-conversion accuracies at T = 1, 2, ... (index T - 1).
      cos: COS accuracies at T = 1, 2, ... for pre-simulation ``presim``
        (any method's; None where a T was not measured).
      presim: rho >= 0.
    Returns:
      ``{"plain": {"latency": [1..], "accuracy": [...]},
      "cos": {"latency": [rho+1..], "accuracy": [...]},
      "matched": [{"latency": L, "cos_T": L - rho, "cos": acc, "plain": acc}, ...]}``
      with one ``matched`` row for every L covered by both curves.
    """
    check_int("presim (rho)", presim, 0)
    def floats(curve):   # None: not measured at that step (parallel neurons)
        return [None if a is None else float(a) for a in curve]

    plain, cos = floats(plain), floats(cos)
    if not plain or not cos:
        raise ValueError("plain and cos need at least one accuracy each")
    matched = [{"latency": presim + t, "cos_T": t, "cos": acc, "plain": plain[presim + t - 1]}
               for t, acc in enumerate(cos, start=1) if presim + t <= len(plain)]
    return {"plain": {"latency": list(range(1, len(plain) + 1)), "accuracy": plain},
            "cos": {"latency": list(range(presim + 1, presim + len(cos) + 1)), "accuracy": cos},
            "matched": matched}
