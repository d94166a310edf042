"""Static calibration: one initial membrane potential per neuron, from data.

COS (:func:`cosjax.calibrate_v0`) calibrates the initial potential of every
neuron per input sample, which costs rho pre-simulation steps before each
answer. Static calibration instead computes, once and from a calibration set,
a fixed initial potential per neuron (or per channel, or per layer) that
every later input starts from: no pre-simulation, no added latency, and a
result that is a plain pytree ``{layer: v0}`` to store beside the model.

**Offset** (the quantity minimised) is the definition of
:mod:`cosjax.analysis`: over a window of W steps, a neuron's spike count minus
the count its QCFS activation demands on the same, time-averaged input::

    xbar   = mean(x_1 .. x_W)                          # raw layer input
    demand = clip(floor(xbar / lam * W + 1/2), 0, W)
    offset = sum(s_1 .. s_W) - demand

**Layer order.** Layers are calibrated in network order: the input of layer l
is simulated with every earlier layer starting from its *static* potential,
and layers after l do not matter (XLA drops their computation, since only
layer l's input is used).

**Estimators** (for each layer, over the calibration set):

* ``"mean_cos"``: the mean of COS's per-sample calibrated potential, with the
  pre-simulation covering the whole window (rho = W) and k rounds. COS
  shifts a neuron that fired at every pre-simulation step (and still ends
  at v >= 1) up by about 1000 (its ``m_quiet`` sentinel): harmless for that
  sample, but it dominates a mean. ``clip_range=(lo, hi)`` clips each
  per-sample potential to [lo, hi] before averaging.
* ``"grid"``: for each candidate v0 of a grid (:func:`default_grid`; 1/2 is
  always a candidate), run the IF neurons over W steps and sum ``|offset|``
  over the calibration set; keep the candidate with the smallest sum (ties go
  to the candidate nearest 1/2, then the lower one). This is a direct
  minimisation of the mean absolute offset.

**Granularity**: ``"neuron"`` (one v0 per neuron, shaped like one sample's
layer output, e.g. ``[H, W, C]``), ``"channel"`` (``[C]``, the last axis,
shared by all positions) or ``"layer"`` (a scalar).

The calibration set is processed in chunks of a fixed size (the last one
padded and masked), so memory does not grow with the set; each layer
compiles one function (per chunk shape).

Typical use::

    v0 = calibrate_static(model, variables, train_images, window=8)
    outputs = simulate_static(model, variables, test_images, v0, time_steps=8)
    save_potentials("v0.npz", v0, info={"window": 8})
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cosjax import xla_options
from cosjax.analysis import OFFSET_BINS, _offset_bins
from cosjax.checks import check_int
from cosjax.neuron import V_INIT, calibrate_v0, if_neuron
from cosjax.qcfs import QCFS
from cosjax.simulate import check_input_batch, layer_names, run_snn, simulate, to_steps

__all__ = [
    "ESTIMATORS", "GRANULARITIES", "INFO_KEY", "StaticPotentials", "batch_potentials",
    "calibrate_layer", "calibrate_static", "default_grid", "expand_potentials", "granular_shape",
    "load_potentials", "neuron_shapes", "offset_counts", "offset_demand", "offset_share",
    "save_potentials", "simulate_static"
]

ESTIMATORS = ("mean_cos", "grid")
GRANULARITIES = ("neuron", "channel", "layer")
INFO_KEY = "__info__"
"""Key of the JSON description in a saved ``.npz`` (not a layer name)."""

StaticPotentials = dict[str, np.ndarray]


# ---------------------------------------------------------------------------
# Shapes and broadcasting.

def _static_kwargs(apply_kwargs: Mapping[str, Any] | None) -> tuple:
    """``apply_kwargs`` as a sorted tuple of items (a static jit argument);
    ``ValueError`` unless its values are hashable."""
    items = tuple(sorted(dict(apply_kwargs or {}).items()))
    try:
        hash(items)
    except TypeError as err:
        raise ValueError(f"apply_kwargs values must be hashable (static), got {items}") from err
    return items


def neuron_shapes(model: nn.Module, variables: Mapping[str, Any],
                  image_shape: Sequence[int],
                  apply_kwargs: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """One sample's neuron shape of every spiking layer, in network order.

    Args:
      image_shape: one image's shape ``(H, W, C)``.
      apply_kwargs: keyword arguments of ``model.apply`` (e.g. ``train=False``).
    Returns:
      ``{layer: shape}``, e.g. ``{"act0": (32, 32, 16), ...}`` (no batch axis),
      ordered as the layers are called. A QCFS module called at several
      places is a layer per call, named as :func:`cosjax.simulate` names
      them (``path``, ``path#2``, ...).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    name = layer_names()

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            shapes[name(context.module)] = tuple(args[0].shape[1:])
        return next_fun(*args, **kwargs)

    image = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    kwargs = dict(apply_kwargs or {})
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, image)
    if not shapes:
        raise ValueError("model has no QCFS layers: nothing to calibrate")
    return shapes


def granular_shape(shape: Sequence[int], granularity: str) -> tuple[int, ...]:
    """The shape of a static v0 for a layer of neuron shape ``shape``."""
    _check_choice("granularity", granularity, GRANULARITIES)
    shape = tuple(shape)
    return {"neuron": shape, "channel": shape[-1:], "layer": ()}[granularity]


def expand_potentials(potentials: Mapping[str, Any],
                      shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Static potentials of any granularity -> one value per neuron.

    Args:
      potentials: ``{layer: v0}`` with v0 ``[...neuron shape]``, ``[C]`` or
        a scalar (see :func:`granular_shape`).
      shapes: :func:`neuron_shapes` of the model.
    Returns:
      ``{layer: v0 [...neuron shape]}`` (NumPy, the input's dtype).
    """
    out = {}
    for name, v0 in potentials.items():
        if name not in shapes:
            raise ValueError(f"potentials name an unknown spiking layer {name!r}; "
                             f"the model has {list(shapes)}")
        v0 = np.asarray(v0)
        shape = tuple(shapes[name])
        if v0.shape not in {granular_shape(shape, g) for g in GRANULARITIES}:
            raise ValueError(f"potential of layer {name!r} has shape {v0.shape}; expected "
                             f"{shape} (per neuron), {shape[-1:]} (per channel) or () (per layer)")
        out[name] = np.broadcast_to(v0, shape).copy()
    return out


def batch_potentials(potentials: Mapping[str, Any], shapes: Mapping[str, Sequence[int]],
                     batch: int) -> dict[str, jax.Array]:
    """Static potentials -> the per-sample form ``{layer: v0 [B, ...]}`` that
    :func:`cosjax.simulate` and :func:`cosjax.run_snn` take as
    ``initial_potentials`` (every sample starts from the same potential).

    Args:
      potentials: ``{layer: v0}`` of any granularity (see :func:`expand_potentials`).
      shapes: :func:`neuron_shapes` of the model.
      batch: B >= 1.
    """
    check_int("batch", batch, 1)
    return {name: jnp.broadcast_to(jnp.asarray(v0), (batch,) + v0.shape)
            for name, v0 in expand_potentials(potentials, shapes).items()}


def simulate_static(model: nn.Module, variables: Mapping[str, Any], images: jax.Array,
                    potentials: Mapping[str, Any], *, time_steps: int,
                    micro_batch: int | None = None,
                    shapes: Mapping[str, Sequence[int]] | None = None,
                    apply_kwargs: Mapping[str, Any] | None = None) -> jax.Array:
    """:func:`cosjax.simulate` with static initial potentials, no pre-simulation.

    Args:
      images: ``[B, H, W, C]``.
      potentials: ``{layer: v0}`` of any granularity; layers it does not name
        start from 1/2.
      time_steps: T >= 1.
      shapes: :func:`neuron_shapes` of the model (computed when None).
      apply_kwargs: keyword arguments of ``model.apply`` (hashable values).
    Returns:
      ``outputs [T, B, classes]``.
    """
    check_input_batch(images)
    if shapes is None:
        shapes = neuron_shapes(model, variables, images.shape[1:], apply_kwargs)
    given = batch_potentials(potentials, shapes, images.shape[0])
    return simulate(model, variables, images, time_steps=time_steps, presim=0,
                    initial_potentials=given, micro_batch=micro_batch, apply_kwargs=apply_kwargs)


# ---------------------------------------------------------------------------
# Calibration.

def default_grid(per_unit: int = 8, low: float = -0.5, high: float = 1.5) -> np.ndarray:
    """Candidate potentials ``low, low + 1/per_unit, ..., high`` (and 1/2).

    The default, -1/2 .. 3/2 in steps of 1/8, spans plain conversion's 1/2
    and COS's single shifts 1/2 - 1 and 1/2 + 1.
    """
    check_int("per_unit", per_unit, 1)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"grid bounds must be finite with low <= high, got {low}, {high}")
    points = np.arange(math.ceil(low * per_unit), math.floor(high * per_unit) + 1) / per_unit
    return np.union1d(points, [V_INIT])


def offset_demand(x: jax.Array, lam: jax.Array, *, batch: int, window: int) -> jax.Array:
    """The spike count a layer's QCFS activation demands over W steps.

    Args:
      x: the layer's raw input (before division by ``lam``), time-batched
        ``[B*S, ...]`` with S >= W, or ``[B, ...]`` when constant over time.
      lam: the threshold (scalar).
    Returns:
      ``clip(floor(mean(x_1..x_W) / lam * W + 1/2), 0, W)``, ``[B, ...]``
      (the definition of :mod:`cosjax.analysis`).
    """
    lam = lam.astype(x.dtype)
    xbar = x if x.shape[0] == batch else to_steps(x, batch, x.shape[0] // batch)[:window].mean(0)
    return jnp.clip(jnp.floor(xbar / lam * window + 0.5), 0, window)


def _window_inputs(x: jax.Array, lam: jax.Array, *, batch: int, window: int) -> jax.Array:
    """Raw layer input -> steps 1..W in threshold units, ``[W, B, ...]``."""
    lam = lam.astype(x.dtype)
    if x.shape[0] == batch:
        return jnp.broadcast_to(x / lam, (window,) + x.shape)
    return to_steps(x, batch, x.shape[0] // batch)[:window] / lam


def _reduce_axes(ndim: int, granularity: str) -> tuple[int, ...]:
    """Axes of a ``[B, ...]`` array summed for ``granularity`` (batch excluded)."""
    return {"neuron": (), "channel": tuple(range(1, ndim - 1)),
            "layer": tuple(range(1, ndim))}[granularity]


def _layer_sums(model, variables, images, mask, fixed, candidates, *, name, window,
                estimator, granularity, iterations, clip_range, apply_kwargs=()):
    """Sums over one chunk for layer ``name`` (earlier layers start from ``fixed``).

    Returns ``mean_cos``: the masked sum of per-sample COS potentials, float
    ``[gshape]``; ``grid``: ``|offset|`` summed per candidate, int32
    ``[G, gshape]`` (neuron) or ``[G, B, gshape]`` (channel, layer: summed
    over the chunk on the host in int64, so no int32 sum can overflow).
    """
    batch = images.shape[0]

    def on_layer(layer, x, lam, spikes):                 # returned: run_snn's records
        return (x, lam) if layer == name else None

    given = {k: jnp.broadcast_to(v, (batch,) + v.shape) for k, v in fixed.items()}
    _, _, records = run_snn(model, variables, images, steps=window, presim=0, iterations=1,
                            initial_potentials=given, on_layer=on_layer,
                            apply_kwargs=dict(apply_kwargs), return_records=True)
    x, lam = records[name]
    u = _window_inputs(x, lam, batch=batch, window=window)          # [W, B, ...]
    shape = (batch,) + (1,) * (u.ndim - 2)
    if estimator == "mean_cos":
        v0 = calibrate_v0(u, window, iterations)                      # [B, ...]
        if clip_range is not None:
            v0 = jnp.clip(v0, clip_range[0], clip_range[1])
        v0 = jnp.where(mask.reshape(shape), v0, 0)
        return v0.sum(axis=(0,) + _reduce_axes(v0.ndim, granularity))
    demand = offset_demand(x, lam, batch=batch, window=window)       # [B, ...]
    weight = mask.astype(jnp.int32).reshape(shape)
    axes = _reduce_axes(demand.ndim, granularity)

    def cost(candidate):
        spikes, _ = if_neuron(u, candidate.astype(u.dtype))
        error = jnp.abs(spikes.sum(axis=0) - demand).astype(jnp.int32) * weight
        return error.sum(axis=0) if granularity == "neuron" else error.sum(axis=axes)

    return jax.lax.map(cost, candidates)


@functools.cache
def _layer_sums_jit():
    return xla_options.jit(_layer_sums, static_argnames=(
        "model", "name", "window", "estimator", "granularity", "iterations", "clip_range",
        "apply_kwargs"))


def _chunks(images: np.ndarray, chunk: int):
    """Yields ``(images [m, ...], mask [m])``; the last chunk zero-padded."""
    for start in range(0, images.shape[0], chunk):
        part = np.asarray(images[start:start + chunk])
        valid = part.shape[0]
        if valid < chunk:
            part = np.concatenate([part, np.zeros((chunk - valid,) + part.shape[1:], part.dtype)])
        yield part, np.arange(chunk) < valid


def calibrate_layer(model: nn.Module, variables: Mapping[str, Any], images: Any, name: str,
                    fixed: Mapping[str, Any], *, window: int, estimator: str = "grid",
                    granularity: str = "neuron", iterations: int = 1,
                    grid: Sequence[float] | None = None,
                    clip_range: tuple[float, float] | None = None, chunk: int = 64,
                    shapes: Mapping[str, Sequence[int]] | None = None,
                    apply_kwargs: Mapping[str, Any] | None = None) -> np.ndarray:
    """The static potential of one spiking layer.

    Args:
      images: the calibration set ``[N, H, W, C]`` (NumPy or JAX).
      name: the layer (a key of :func:`neuron_shapes`).
      fixed: static potentials ``{layer: v0}`` (any granularity) of the
        layers that should not start from 1/2 while ``name``'s input is
        simulated (:func:`calibrate_static` passes every earlier layer).
      window, estimator, granularity, iterations, grid, clip_range, chunk,
        apply_kwargs: as in :func:`calibrate_static`.
    Returns:
      v0 shaped :func:`granular_shape` of the layer, in the images' float dtype.
    """
    apply_kwargs = _static_kwargs(apply_kwargs)
    images, shapes, candidates = _check_args(model, variables, images, window, estimator,
                                             granularity, iterations, grid, chunk, shapes,
                                             apply_kwargs)
    clip_range = _check_clip_range(clip_range)
    if name not in shapes:
        raise ValueError(f"unknown spiking layer {name!r}; the model has {list(shapes)}")
    dtype = images.dtype
    fixed = {k: jnp.asarray(v, dtype) for k, v in expand_potentials(fixed, shapes).items()}
    run = functools.partial(_layer_sums_jit(), model, variables, name=name, window=window,
                            estimator=estimator, granularity=granularity, iterations=iterations,
                            clip_range=clip_range if estimator == "mean_cos" else None,
                            apply_kwargs=apply_kwargs)
    shape = tuple(shapes[name])
    total = None
    for part, mask in _chunks(images, chunk):
        sums = np.asarray(jax.device_get(run(jnp.asarray(part), jnp.asarray(mask), fixed,
                                             jnp.asarray(candidates, dtype))))
        sums = sums.astype(np.float64 if estimator == "mean_cos" else np.int64)
        if estimator == "grid" and granularity != "neuron":
            sums = sums.sum(axis=1)                      # over the chunk's samples
        total = sums if total is None else total + sums
    if estimator == "mean_cos":
        per_value = images.shape[0] * math.prod(shape) // math.prod(granular_shape(shape, granularity))
        return (total / per_value).astype(dtype)
    best = np.argmin(total, axis=0)                       # first minimum: nearest 1/2
    return candidates[best].astype(dtype)


def calibrate_static(model: nn.Module, variables: Mapping[str, Any], images: Any, *,
                     window: int, estimator: str = "grid", granularity: str = "neuron",
                     iterations: int = 1, grid: Sequence[float] | None = None,
                     clip_range: tuple[float, float] | None = None, chunk: int = 64,
                     on_layer_done: Callable[[str, np.ndarray], None] | None = None,
                     apply_kwargs: Mapping[str, Any] | None = None) -> StaticPotentials:
    """Static initial potentials of every spiking layer, layer by layer.

    Layer l is calibrated on its input simulated with layers 0..l-1 starting
    from the static potentials already computed for them.

    Args:
      model, variables: a QCFS model and its variables.
      images: the calibration set ``[N, H, W, C]``, preprocessed like the
        model's inputs (NumPy or JAX; read in chunks).
      window: W >= 1, the steps over which offsets are measured (and rho of
        the ``mean_cos`` estimator).
      estimator: ``"grid"`` or ``"mean_cos"`` (see the module docstring).
      granularity: ``"neuron"``, ``"channel"`` or ``"layer"``.
      iterations: k >= 1, COS rounds of ``mean_cos`` (ignored by ``grid``).
      grid: candidate potentials of ``grid`` (default :func:`default_grid`;
        1/2 is always added).
      clip_range: optional ``(lo, hi)``: ``mean_cos`` clips each per-sample
        potential to [lo, hi] before averaging (None: the plain mean).
      chunk: samples per compiled call (memory scales with it, not with N).
      on_layer_done: optional ``callback(layer, v0)`` after each layer.
      apply_kwargs: keyword arguments of ``model.apply`` (hashable values,
        e.g. ``{"train": False}``).
    Returns:
      ``{layer: v0}`` in network order, v0 a NumPy array of
      :func:`granular_shape` (``[...neuron shape]``, ``[C]`` or ``[]``).
    """
    apply_kwargs = _static_kwargs(apply_kwargs)
    images, shapes, _ = _check_args(model, variables, images, window, estimator,
                                    granularity, iterations, grid, chunk, None, apply_kwargs)
    _check_clip_range(clip_range)
    potentials: StaticPotentials = {}
    for name in shapes:
        potentials[name] = calibrate_layer(
            model, variables, images, name, dict(potentials), window=window,
            estimator=estimator, granularity=granularity, iterations=iterations, grid=grid,
            clip_range=clip_range, chunk=chunk, shapes=shapes, apply_kwargs=dict(apply_kwargs))
        if on_layer_done is not None:
            on_layer_done(name, potentials[name])
    return potentials


def _check_choice(what: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_clip_range(clip_range: Any) -> tuple[float, float] | None:
    """None, or ``(lo, hi)`` as two finite floats with lo <= hi."""
    if clip_range is None:
        return None
    try:
        lo, hi = (float(v) for v in clip_range)
    except (TypeError, ValueError):
        raise ValueError(f"clip_range must be None or (lo, hi), got {clip_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"clip_range must be finite with lo <= hi, got {clip_range!r}")
    return lo, hi


def _check_images(images: Any, window: Any, chunk: Any) -> np.ndarray:
    """Validates a data set ``[N, H, W, C]`` (N >= 1, float), W and the
    chunk size; returns the images as NumPy."""
    check_int("window (W)", window, 1)
    check_int("chunk", chunk, 1)
    check_input_batch(images)
    images = np.asarray(images)
    if images.shape[0] < 1:
        raise ValueError("the calibration set is empty")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be floating point (preprocessed), got {images.dtype}")
    return images


def _check_args(model, variables, images, window, estimator, granularity, iterations, grid,
                chunk, shapes, apply_kwargs=()):
    """Validates the calibration arguments; returns ``(images as NumPy
    [N, H, W, C] float, neuron shapes, sorted candidates)``."""
    _check_choice("estimator", estimator, ESTIMATORS)
    _check_choice("granularity", granularity, GRANULARITIES)
    check_int("iterations (k)", iterations, 1)
    images = _check_images(images, window, chunk)
    candidates = default_grid() if grid is None else np.asarray(grid, np.float64)
    if candidates.ndim != 1 or candidates.size < 1 or not np.all(np.isfinite(candidates)):
        raise ValueError(f"grid must be a non-empty 1-D sequence of finite values, got {grid!r}")
    candidates = np.union1d(candidates, [V_INIT])
    # Nearest 1/2 first, then lower: np.argmin keeps the first minimum.
    candidates = candidates[np.lexsort((candidates, np.abs(candidates - V_INIT)))]
    if shapes is None:
        shapes = neuron_shapes(model, variables, images.shape[1:], dict(apply_kwargs))
    return images, shapes, candidates


# ---------------------------------------------------------------------------
# Measuring offsets with static potentials.

def _offset_pass(model, variables, images, mask, given, *, window, apply_kwargs=()):
    batch = images.shape[0]
    weight = mask.astype(jnp.int32)

    def on_layer(name, x, lam, spikes):                  # returned: run_snn's records
        demand = offset_demand(x, lam, batch=batch, window=window)
        actual = spikes[:window].sum(axis=0)
        return (_offset_bins(actual - demand) * weight[:, None]).sum(axis=0)

    _, _, bins = run_snn(model, variables, images, steps=window, presim=0, iterations=1,
                         initial_potentials={k: jnp.broadcast_to(v, (batch,) + v.shape)
                                             for k, v in given.items()},
                         on_layer=on_layer, apply_kwargs=dict(apply_kwargs),
                         return_records=True)
    return bins


@functools.cache
def _offset_pass_jit():
    return xla_options.jit(_offset_pass, static_argnames=("model", "window", "apply_kwargs"))


def offset_counts(model: nn.Module, variables: Mapping[str, Any], images: Any,
                  potentials: Mapping[str, Any] | None, *, window: int,
                  chunk: int = 64,
                  apply_kwargs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Offset histograms over W steps with static potentials (no pre-simulation).

    Args:
      images: ``[N, H, W, C]``.
      potentials: ``{layer: v0}`` of any granularity; unnamed layers (all,
        for None) start from 1/2, which is plain conversion.
      apply_kwargs: keyword arguments of ``model.apply`` (hashable values).
    Returns:
      ``{layer: int64 [6]}``: neurons x samples per bin of
      :data:`cosjax.analysis.OFFSET_BINS` (0, +1, -1, +2, -2, |o| >= 3).
    """
    images = _check_images(images, window, chunk)
    apply_kwargs = _static_kwargs(apply_kwargs)
    shapes = neuron_shapes(model, variables, images.shape[1:], dict(apply_kwargs))
    given = {k: jnp.asarray(v, images.dtype)
             for k, v in expand_potentials(potentials or {}, shapes).items()}
    total: dict[str, np.ndarray] = {}
    for part, mask in _chunks(images, chunk):
        bins = jax.device_get(_offset_pass_jit()(model, variables, jnp.asarray(part),
                                                 jnp.asarray(mask), given, window=window,
                                                 apply_kwargs=apply_kwargs))
        for name in shapes:
            total[name] = total.get(name, 0) + np.asarray(bins[name], np.int64)
    return total


def offset_share(counts: Mapping[str, np.ndarray]) -> float:
    """The share of nonzero offsets over all layers of :func:`offset_counts`."""
    stacked = np.sum([np.asarray(c, np.int64) for c in counts.values()], axis=0)
    if stacked.shape != (len(OFFSET_BINS),) or stacked.sum() <= 0:
        raise ValueError("offset counts must be non-empty [6] histograms")
    return float(1.0 - stacked[0] / stacked.sum())


# ---------------------------------------------------------------------------
# Saving and loading.

def save_potentials(path: str, potentials: Mapping[str, Any],
                    info: Mapping[str, Any] | None = None) -> None:
    """Writes ``{layer: v0}`` to a NumPy ``.npz`` file atomically.

    The file is written under a temporary name in the same directory and
    renamed, so an interrupted save never leaves a partial file. Values are
    stored exactly (dtype and bits kept).

    Args:
      path: the destination (``.npz`` is not appended).
      info: optional JSON-serialisable description (estimator, W, set size).
    """
    arrays = {name: np.asarray(v0) for name, v0 in potentials.items()}
    if INFO_KEY in arrays:
        raise ValueError(f"{INFO_KEY!r} is reserved and cannot name a layer")
    arrays[INFO_KEY] = np.asarray(json.dumps(dict(info or {})))
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)     # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_potentials(path: str) -> tuple[StaticPotentials, dict[str, Any]]:
    """Reads a file of :func:`save_potentials`: ``({layer: v0}, info)``."""
    try:
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("not a .npz file")
            arrays = {name: data[name] for name in data.files}
        info = json.loads(str(arrays.pop(INFO_KEY))) if INFO_KEY in arrays else {}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        # NumPy calls a file that is no array file at all "pickled data".
        reason = ("not a .npz file" if isinstance(error, zipfile.BadZipFile)
                  or "pickle" in str(error) else str(error))
        raise ValueError(f"cannot read static potentials from {path!r}: {reason}") from None
    if not isinstance(info, dict):
        raise ValueError(f"cannot read static potentials from {path!r}: its {INFO_KEY} "
                         f"is not a JSON object")
    return arrays, info
