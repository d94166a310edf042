"""Is a QCFS model convertible to an SNN? Decided from its traced program.

:func:`cosjax.simulate` runs every layer after the first spiking layer once
on all time steps (a time-batched ``[B*S, ...]`` batch) and sums the outputs
over time. That is the SNN only if everything between spiking layers, and
from the last spiking layer to the output, is *affine in the spike train,
per example and the same at every step*: convolutions, dense layers,
eval-mode batch norm, average/sum pooling, reshapes and transposes, sums of
paths, scaling by constants, eval-mode dropout (the identity). Anything else
-- max (max-pooling, relu), products of two activation-dependent values
(normalisation over features such as LayerNorm, gating, attention), control
flow that depends on activations -- computes something different in the
SNN, silently.

:func:`check_convertible` traces ``model.apply`` with every
:class:`cosjax.QCFS` call replaced by a marker, then walks the equations of
the program, tracking what each value depends on:

* constant: parameters, literals and what is computed from them alone
  (anything goes: batch-norm statistics, ``rsqrt(var + eps)``, ...);
* analog: the input, before any spiking layer (anything goes: these layers
  run once, on ``[B, ...]``);
* spiking: anything computed from a spiking layer's output. Only affine
  operations are accepted; the first other one raises ``ValueError`` naming
  the primitive, the Flax module path where it occurs, and why.

Mixing an analog tensor into a spiking path (a skip connection from before
the first spiking layer) is refused as well: the analog tensor is a
``[B, ...]`` batch, the spiking path a ``[B*S, ...]`` one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.interpreters import batching

from cosjax.qcfs import QCFS

__all__ = [
    "AFFINE", "COMPARISONS", "CONTROL", "INDEXED", "MAXIMA", "PRODUCTS", "RANDOM", "UNKNOWN",
    "WHY_ANALOG", "WHY_BATCH", "WHY_CAST", "WHY_CONTROL", "WHY_LOOP", "WHY_MAX", "WHY_OTHER",
    "WHY_PRODUCT", "WHY_RANDOM", "check_convertible"
]

CONSTANT, ANALOG, SPIKING = 0, 1, 2

_marker = jex_core.Primitive("cosjax_spiking_layer")
_marker.def_abstract_eval(lambda aval, inserted: aval)


def _marker_batched(args, dims, inserted):
    """Under ``vmap`` (e.g. ``flax.linen.vmap``) the marker records where the
    mapped axis was inserted, so that the walk still finds the batch axis."""
    (x,), (d,) = args, dims
    if d is None:                               # not mapped
        return _marker.bind(x, inserted=inserted), d
    return _marker.bind(x, inserted=inserted + (d,)), d


batching.primitive_batchers[_marker] = _marker_batched


def _marker_batch_axis(inserted: tuple[int, ...]) -> int:
    """The batch axis of a marker's output: 0, moved by each inserted vmap axis."""
    axis = 0
    for d in inserted:
        axis += d <= axis
    return axis

AFFINE = frozenset({
    "add", "add_any", "sub", "neg", "concatenate", "pad", "reshape", "transpose",
    "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "convert_element_type",
    "copy", "copy_p", "reduce_sum", "reduce_window_sum", "cumsum", "reduce_precision",
    "sharding_constraint", "mesh_cast", "optimization_barrier", "split", "stop_gradient",
})
"""Primitives affine in every input (their non-spiking inputs are free)."""

INDEXED = {"select_n": (0,), "dynamic_slice": None, "dynamic_update_slice": None,
           "gather": (1,)}
"""Affine in their data operands when the listed index operands (None: all
but the first) are not spiking."""

PRODUCTS = frozenset({"mul", "dot_general", "conv_general_dilated"})
MAXIMA = frozenset({"max", "min", "reduce_max", "reduce_min", "reduce_window_max",
                    "reduce_window_min", "argmax", "argmin", "clamp", "sort", "top_k",
                    "cummax", "cummin"})
CONTROL = frozenset({"cond", "while", "scan"})
COMPARISONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne", "sign", "is_finite"})
RANDOM = frozenset({"random_bits", "rng_bit_generator", "rng_uniform", "threefry2x32"})
"""Primitives that draw random values."""

WHY_MAX = ("max/min is not affine: the time average of a max is not the max of time "
           "averages (max-pooling or relu after a spiking layer); use average pooling, "
           "and QCFS as the activation")
WHY_PRODUCT = ("it multiplies two activation-dependent values (as normalisation over features "
               "such as LayerNorm, gating or attention do): the time average of a product is "
               "not the product of time averages")
WHY_CONTROL = ("control flow that depends on activations takes different branches at "
               "different time steps")
WHY_OTHER = ("it is not affine in the spike train; between spiking layers only convolutions, "
             "dense layers, eval-mode batch norm, average/sum pooling, reshapes, sums of paths "
             "and scaling by constants carry over exactly")
WHY_LOOP = ("this check does not analyse the body of a loop (`scan`, `while`; e.g. "
            "flax.linen.scan over layers) that carries spiking values, so it cannot tell "
            "whether the loop is affine and per example; write the layers out (a Python for "
            "loop), or pass check=False if you know the body is convertible")
WHY_BATCH = ("it combines different examples (it reduces over the batch axis): in the SNN that "
             "axis holds every time step of every example")
WHY_CAST = ("a cast to an integer or boolean type rounds each time step's value on its own: "
            "the sum over time of rounded values is not the rounded sum")
WHY_RANDOM = ("it combines random values drawn inside the model with a spiking path: in the "
              "SNN each of the S time steps draws its own values, so the time average is not "
              "the ANN's one draw (pass noise as an input, or draw it before the first spiking "
              "layer)")
WHY_ANALOG = ("it mixes a tensor computed before the first spiking layer (analog, constant over "
              "time, a [B, ...] batch) into a spiking path (a time-batched [B*S, ...] batch); "
              "such skip connections are not supported: pass the analog tensor through a QCFS "
              "layer first")


def check_convertible(model: nn.Module, variables: Mapping[str, Any], example_input: Any,
                      **apply_kwargs: Any) -> None:
    """Raises ``ValueError`` unless ``model`` converts exactly to an SNN.

    Traces (does not run) ``model.apply(variables, example_input,
    **apply_kwargs)``; only shapes and dtypes of the arrays matter.

    Args:
      model: a Flax module whose activations are :class:`cosjax.QCFS`.
      variables: its variables (arrays, tracers or ``jax.ShapeDtypeStruct``).
      example_input: an input batch ``[B, ...]`` (or its shape/dtype struct).
      apply_kwargs: passed to ``model.apply`` (e.g. ``train=False``).
    Raises:
      ValueError: the model has no QCFS layer, or the first operation that
        breaks conversion, with the module path where it occurs and why.
    """
    jaxpr = _trace(model, variables, example_input, apply_kwargs)
    n_vars = len(jax.tree_util.tree_leaves(variables))
    kinds = [CONSTANT] * n_vars + [ANALOG] * (len(jaxpr.jaxpr.invars) - n_vars)
    seen, _, _ = _walk(jaxpr.jaxpr, kinds, ())
    if not seen:
        raise ValueError("model has no QCFS layers: nothing to convert to spiking neurons")
    _check_time_batched(model, variables, example_input, apply_kwargs)


TIME_BATCHED_STEPS = 2
"""S of the shape-only trace of :func:`_check_time_batched`."""


def _check_time_batched(model, variables, example_input, apply_kwargs) -> None:
    """Traces (shapes only) the model as the SNN runs it, every spiking
    layer's output time-batched ``[B*S, ...]`` (S = 2), and refuses it in one
    line if that fails or changes an output's batch: the model then reads a
    shape from its input after a spiking layer (``h.reshape(x.shape[0], -1)``)."""
    batch = jax.tree_util.tree_leaves(_abstract(example_input))[0].shape[0]
    steps = TIME_BATCHED_STEPS

    def time_batched(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            x = args[0]
            return jnp.repeat(x, steps, axis=0) if x.shape[0] == batch else x
        return next_fun(*args, **kwargs)

    def apply(v, x):
        with nn.intercept_methods(time_batched):
            return model.apply(v, x, **apply_kwargs)

    hint = ("after a spiking layer every value holds all S time steps of each example "
            "([B*S, ...]); a shape read from the input (e.g. h.reshape(x.shape[0], -1)) "
            "is then wrong: use the value's own shape (h.reshape(h.shape[0], -1))")
    try:
        outputs = jax.eval_shape(apply, _abstract(variables), _abstract(example_input))
    except Exception as err:   # any failure of the model is reported, in one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"model is not convertible to an SNN: it fails when its spiking "
                         f"layers carry time-batched values ({type(err).__name__}: {first}); "
                         f"{hint}. (cosjax.check_convertible; check=False skips this "
                         "check.)") from None
    for path, leaf in jax.tree_util.tree_leaves_with_path(outputs):
        if leaf.ndim and leaf.shape[0] not in (batch, batch * steps):
            raise ValueError(f"model is not convertible to an SNN: its output"
                             f"{jax.tree_util.keystr(path)} has a batch of {leaf.shape[0]} "
                             f"when its spiking layers carry {steps} time steps of each of "
                             f"{batch} examples; {hint}. (cosjax.check_convertible; "
                             "check=False skips this check.)")


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a)), tree)


def _trace(model, variables, example_input, apply_kwargs):
    """The closed jaxpr of ``apply`` with QCFS calls replaced by the marker."""
    def marker(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            return _marker.bind(args[0], inserted=())
        return next_fun(*args, **kwargs)

    def apply(v, x):
        with nn.intercept_methods(marker):
            return model.apply(v, x, **apply_kwargs)

    return jax.make_jaxpr(apply)(_abstract(variables), _abstract(example_input))


def _name_stack(eqn, outer: tuple[str, ...]) -> tuple[str, ...]:
    """An equation's full name stack: the equations of a called jaxpr (jit,
    custom_jvp, remat: ``nn.remat``) carry theirs relative to the calling
    equation's, ``outer``."""
    return outer + tuple(p for p in str(eqn.source_info.name_stack).split("/") if p)


def _where(parts: tuple[str, ...]) -> str:
    """Where an equation of name stack ``parts`` (:func:`_name_stack`) sits:
    its Flax module path (without the top module's class name)."""
    if not parts:
        return ""
    return "module " + "/".join(parts[1:]) if len(parts) > 1 else f"the top-level module {parts[0]}"


def _refuse(name: str, where: str, why: str) -> ValueError:
    return ValueError(f"model is not convertible to an SNN: `{name}` at "
                      f"{where or 'the top level of the model'}: {why}. "
                      "(cosjax.check_convertible; check=False skips this check.)")


def _sub_jaxpr(eqn):
    """The jaxpr a call-like equation (jit, custom_jvp/vjp, remat) runs on
    its inputs, or None."""
    for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if isinstance(inner, jex_core.Jaxpr) and len(inner.invars) == len(eqn.invars):
            return inner
    return None


def _draws_random(jaxpr) -> bool:
    """Whether ``jaxpr`` (or a jaxpr it calls) draws random values."""
    return any(_eqn_draws(eqn) for eqn in jaxpr.eqns)


UNKNOWN = -1
"""Batch axis position of a value whose batch axis cannot be followed."""


def _batch_axis_after(eqn, axes: list[int | None]) -> int:
    """The batch axis of an equation's (first) output, given the batch axis
    of each spiking input (None for the other inputs): follows transposes,
    reductions, squeezes, broadcasts and reshapes that keep the leading
    dimension; :data:`UNKNOWN` where it cannot be followed."""
    name, params = eqn.primitive.name, eqn.params
    known = [a for a in axes if a is not None]
    if not known or UNKNOWN in known:
        return UNKNOWN
    axis = known[0]
    if name == "transpose":
        return list(params["permutation"]).index(axis)
    if name in ("reduce_sum", "squeeze"):
        dims = params["axes"] if name == "reduce_sum" else params["dimensions"]
        return UNKNOWN if axis in dims else axis - sum(d < axis for d in dims)
    if name == "broadcast_in_dim":
        return params["broadcast_dimensions"][axis]
    if name == "reshape":
        old, new = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
        return 0 if axis == 0 and new and new[0] == old[0] else UNKNOWN
    if name == "dot_general":
        (contract, batch_dims) = params["dimension_numbers"]
        i = next(i for i, a in enumerate(axes) if a is not None)
        if axis in batch_dims[i]:
            return list(batch_dims[i]).index(axis)
        free = [d for d in range(eqn.invars[i].aval.ndim)
                if d not in contract[i] and d not in batch_dims[i]]
        lhs_free = eqn.invars[0].aval.ndim - len(contract[0]) - len(batch_dims[0])
        return len(batch_dims[0]) + (0 if i == 0 else lhs_free) + free.index(axis)
    if name == "conv_general_dilated":
        numbers = params["dimension_numbers"]
        return numbers.out_spec[0] if axis == numbers.lhs_spec[0] else UNKNOWN
    if name == "gather":
        return _gather_axis(eqn, axes, axis)
    return axis


def _gather_axis(eqn, axes: list[int | None], axis: int) -> int:
    """The batch axis after a ``gather`` from a spiking operand that takes
    every example (the batch axis is neither indexed nor sliced), else
    :data:`UNKNOWN`; e.g. ``h[:, idx]``, a permutation of features."""
    if axes[0] is None:                       # the indices are spiking: refused anyway
        return UNKNOWN
    numbers, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
    dropped = set(numbers.collapsed_slice_dims) | set(numbers.operand_batching_dims)
    if (axis in dropped or axis in numbers.start_index_map
            or sizes[axis] != eqn.invars[0].aval.shape[axis]):
        return UNKNOWN
    kept = [d for d in range(eqn.invars[0].aval.ndim) if d not in dropped]
    return numbers.offset_dims[kept.index(axis)]


def _mixes_examples(eqn, ins: list[int], axes: list[int | None]) -> bool:
    """Whether an affine equation on a spiking value sums over its batch axis
    (the leading one, wherever transposes moved it), e.g. a mean over the
    batch (train-mode batch norm)."""
    name, params = eqn.primitive.name, eqn.params
    batch = [a for a in axes if a is not None]
    axis = batch[0] if batch else 0

    def over(dims) -> bool:
        return axis == UNKNOWN or axis in dims

    if name == "reduce_sum":
        return over(params["axes"])
    if name == "cumsum":
        return over((params["axis"],))
    if name == "reduce_window_sum":
        return axis == UNKNOWN or params["window_dimensions"][axis] != 1
    if name == "dot_general":
        contract, _ = params["dimension_numbers"]   # ((lhs, rhs) contracting, batch)
        return any(ins[i] == SPIKING and (axes[i] == UNKNOWN or axes[i] in contract[i])
                   for i in (0, 1))
    return False


def _live_equations(jaxpr) -> list:
    """The equations the outputs depend on, in order (values computed and
    dropped, e.g. by a user's interceptor that only records, are not the SNN's)."""
    live = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
    return kept[::-1]


def _walk(jaxpr, in_kinds: list[int], outer: tuple[str, ...], in_axes: list[int | None] | None = None,
          lost: list[str] | None = None) -> tuple[bool, list[int], list[int | None]]:
    """Checks ``jaxpr`` given the kinds of its inputs (:data:`CONSTANT`,
    :data:`ANALOG`, :data:`SPIKING`) and the batch axis of its spiking
    inputs (default 0). Returns whether it contains a spiking layer, the
    kinds of its outputs and their batch axes (None where not spiking).
    ``lost`` collects where a batch axis could not be followed (for the
    refusal that needs it)."""
    lost = [] if lost is None else lost
    kinds: dict[Any, int] = dict(zip(jaxpr.invars, in_kinds, strict=True))
    kinds.update((v, CONSTANT) for v in jaxpr.constvars)
    axes: dict[Any, int] = {v: (0 if in_axes is None else a)
                            for v, k, a in zip(jaxpr.invars, in_kinds,
                                               in_axes or [0] * len(in_kinds), strict=True)
                            if k == SPIKING}
    random: set[Any] = set()
    seen = False

    def kind(v):
        return CONSTANT if isinstance(v, jex_core.Literal) else kinds.get(v, CONSTANT)

    for eqn in _live_equations(jaxpr):
        name = eqn.primitive.name
        stack = _name_stack(eqn, outer)
        where = _where(stack)
        ins = [kind(v) for v in eqn.invars]
        in_axes_ = [axes.get(v) if k == SPIKING else None for v, k in zip(eqn.invars, ins)]
        draws = _eqn_draws(eqn) or any(not isinstance(v, jex_core.Literal) and v in random
                                       for v in eqn.invars)
        if draws:
            if SPIKING in ins:
                raise _refuse(name, where, WHY_RANDOM)
            random.update(eqn.outvars)
        if name == _marker.name:
            out, seen = SPIKING, True
            axes[eqn.outvars[0]] = _marker_batch_axis(eqn.params["inserted"])
        elif SPIKING not in ins:
            out = max(ins, default=CONSTANT)
        else:
            handled = _walk_call(eqn, ins, in_axes_, stack, kinds, axes, lost)
            if handled is not None:
                seen |= handled
                continue
            _check_spiking_equation(eqn, ins, in_axes_, where, lost)
            out = SPIKING
            axis = _batch_axis_after(eqn, in_axes_)
            if axis == UNKNOWN and UNKNOWN not in in_axes_:
                lost.append(f"`{name}` at {where or 'the top level of the model'}")
            for v in eqn.outvars:
                axes[v] = axis
        for v in eqn.outvars:
            kinds[v] = out
    return seen, [kind(v) for v in jaxpr.outvars], [axes.get(v) for v in jaxpr.outvars]


def _eqn_draws(eqn) -> bool:
    """Whether one equation draws random values (itself or in a jaxpr it calls)."""
    if eqn.primitive.name in RANDOM:
        return True
    for value in eqn.params.values():
        for inner in (value if isinstance(value, (tuple, list)) else (value,)):
            inner = getattr(inner, "jaxpr", inner)
            if isinstance(inner, jex_core.Jaxpr) and _draws_random(inner):
                return True
    return False


def _walk_call(eqn, ins, in_axes, stack, kinds, axes, lost) -> bool | None:
    """Walks the jaxpr(s) of a call-like equation or a ``cond`` on spiking
    inputs (``stack``: the equation's :func:`_name_stack`), recording its
    outputs' kinds and batch axes; returns whether it holds a spiking layer,
    or None when ``eqn`` is neither."""
    name, where = eqn.primitive.name, _where(stack)
    sub = _sub_jaxpr(eqn) if name not in CONTROL else None
    if sub is not None:
        seen, out_kinds, out_axes = _walk(sub, ins, stack, in_axes, lost)
    elif name == "cond":
        if ins[0] == SPIKING:
            raise _refuse(name, where, WHY_CONTROL)
        seen, out_kinds, out_axes = False, None, None
        for branch in eqn.params["branches"]:
            branch_seen, ks, branch_axes = _walk(branch.jaxpr, ins[1:], stack, in_axes[1:],
                                                 lost)
            seen |= branch_seen
            if out_kinds is None:
                out_kinds, out_axes = ks, branch_axes
            else:
                out_kinds = [max(a, b) for a, b in zip(out_kinds, ks, strict=True)]
                out_axes = [a if a == b else UNKNOWN for a, b in zip(out_axes, branch_axes,
                                                                     strict=True)]
    else:
        return None
    for v, k, a in zip(eqn.outvars, out_kinds, out_axes, strict=True):
        kinds[v] = k
        if k == SPIKING:
            axes[v] = UNKNOWN if a is None else a
    return seen


def _check_spiking_equation(eqn, ins, in_axes, where, lost=()) -> None:
    """Raises the refusal for a primitive (not a call) applied to a spiking value,
    unless it is affine, per example and the same at every step."""
    name = eqn.primitive.name
    if name in CONTROL:
        raise _refuse(name, where, WHY_CONTROL if name == "cond" else WHY_LOOP)
    if name in PRODUCTS or name in ("integer_pow", "square"):
        if name == "integer_pow" and eqn.params.get("y") == 1:
            pass
        elif name in ("integer_pow", "square") or sum(k != CONSTANT for k in ins) > 1:
            raise _refuse(name, where, WHY_PRODUCT)
    elif name == "div":
        if ins[1] != CONSTANT:
            raise _refuse(name, where, WHY_PRODUCT if ins[0] != CONSTANT else WHY_OTHER)
    elif name in INDEXED:
        index = INDEXED[name] or range(1, len(ins))
        if any(ins[i] == SPIKING for i in index):
            raise _refuse(name, where, "its index or predicate depends on spikes: "
                          + WHY_CONTROL)
    elif name in MAXIMA:
        raise _refuse(name, where, WHY_MAX)
    elif name in COMPARISONS:
        raise _refuse(name, where, "a comparison of activation-dependent values (a "
                      "threshold, a mask, a branch condition) is decided anew at every "
                      "time step")
    elif name not in AFFINE:
        raise _refuse(name, where, WHY_OTHER)
    if name == "convert_element_type" and not jnp.issubdtype(eqn.params["new_dtype"],
                                                             jnp.inexact):
        raise _refuse(name, where, WHY_CAST)
    if _mixes_examples(eqn, ins, in_axes):
        raise _refuse(name, where, _why_batch(in_axes, lost))
    if ANALOG in ins:
        raise _refuse(name, where, WHY_ANALOG)


def _why_batch(in_axes, lost) -> str:
    """Why an equation that may combine examples is refused: where the batch
    axis was lost, when it was."""
    if UNKNOWN in in_axes and lost:
        return (f"its batch axis could not be followed past {lost[0]} (an operation that "
                "indexes, slices or reshapes the batch axis); every operation after a "
                "spiking layer must keep each example's values apart")
    return WHY_BATCH
