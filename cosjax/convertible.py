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

from typing import Any, Mapping

import flax.linen as nn
import jax
from jax.extend import core as jex_core

from cosjax.qcfs import QCFS

CONSTANT, ANALOG, SPIKING = 0, 1, 2

_marker = jex_core.Primitive("cosjax_spiking_layer")
_marker.def_abstract_eval(lambda aval: aval)

AFFINE = frozenset({
    "add", "add_any", "sub", "neg", "concatenate", "pad", "reshape", "transpose",
    "broadcast_in_dim", "squeeze", "expand_dims", "slice", "rev", "convert_element_type",
    "copy", "copy_p", "reduce_sum", "reduce_window_sum", "cumsum", "reduce_precision",
    "sharding_constraint", "mesh_cast", "optimization_barrier", "split",
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
WHY_BATCH = ("it combines different examples (it reduces over the batch axis): in the SNN that "
             "axis holds every time step of every example")
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
    seen, _ = _walk(jaxpr.jaxpr, kinds, "")
    if not seen:
        raise ValueError("model has no QCFS layers: nothing to convert to spiking neurons")


def _abstract(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jax.numpy.shape(a), jax.numpy.result_type(a)), tree)


def _trace(model, variables, example_input, apply_kwargs):
    """The closed jaxpr of ``apply`` with QCFS calls replaced by the marker."""
    def marker(next_fun, args, kwargs, context):
        if isinstance(context.module, QCFS) and context.method_name == "__call__":
            return _marker.bind(args[0])
        return next_fun(*args, **kwargs)

    def apply(v, x):
        with nn.intercept_methods(marker):
            return model.apply(v, x, **apply_kwargs)

    return jax.make_jaxpr(apply)(_abstract(variables), _abstract(example_input))


def _where(eqn, outer: str) -> str:
    """Where an equation sits: its Flax module path (the name stack without
    the top module's class name), or ``outer`` when it has no name stack."""
    parts = [p for p in str(eqn.source_info.name_stack).split("/") if p]
    if not parts:
        return outer
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


def _mixes_examples(eqn, ins: list[int]) -> bool:
    """Whether an affine equation on a spiking value sums over its leading
    (batch) axis, e.g. a mean over the batch (train-mode batch norm)."""
    name, params = eqn.primitive.name, eqn.params
    if name == "reduce_sum":
        return 0 in params["axes"]
    if name == "cumsum":
        return params["axis"] == 0
    if name == "reduce_window_sum":
        return params["window_dimensions"][0] != 1
    if name == "dot_general":
        contract, _ = params["dimension_numbers"]   # ((lhs, rhs) contracting, batch)
        return any(ins[i] == SPIKING and 0 in contract[i] for i in (0, 1))
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


def _walk(jaxpr, in_kinds: list[int], outer: str) -> tuple[bool, list[int]]:
    """Checks ``jaxpr`` given the kinds of its inputs (:data:`CONSTANT`,
    :data:`ANALOG`, :data:`SPIKING`). Returns whether it contains a spiking
    layer and the kinds of its outputs."""
    kinds: dict[Any, int] = dict(zip(jaxpr.invars, in_kinds, strict=True))
    kinds.update((v, CONSTANT) for v in jaxpr.constvars)
    seen = False

    def kind(v):
        return CONSTANT if isinstance(v, jex_core.Literal) else kinds.get(v, CONSTANT)

    for eqn in _live_equations(jaxpr):
        name = eqn.primitive.name
        where = _where(eqn, outer)
        ins = [kind(v) for v in eqn.invars]
        if name == _marker.name:
            out, seen = SPIKING, True
        elif SPIKING not in ins:
            out = max(ins, default=CONSTANT)
        else:
            out = SPIKING
            sub = _sub_jaxpr(eqn) if name not in CONTROL else None
            if sub is not None:
                sub_seen, out_kinds = _walk(sub, ins, where)
                seen |= sub_seen
                for v, k in zip(eqn.outvars, out_kinds, strict=True):
                    kinds[v] = k
                continue
            if name == "cond":
                if ins[0] == SPIKING:
                    raise _refuse(name, where, WHY_CONTROL)
                out_kinds = None
                for branch in eqn.params["branches"]:
                    branch_seen, ks = _walk(branch.jaxpr, ins[1:], where)
                    seen |= branch_seen
                    out_kinds = ks if out_kinds is None else [
                        max(a, b) for a, b in zip(out_kinds, ks, strict=True)]
                for v, k in zip(eqn.outvars, out_kinds, strict=True):
                    kinds[v] = k
                continue
            if name in CONTROL:
                raise _refuse(name, where, WHY_CONTROL + " (loops over spiking values are "
                              "not analysed)")
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
            if _mixes_examples(eqn, ins):
                raise _refuse(name, where, WHY_BATCH)
            if ANALOG in ins:
                raise _refuse(name, where, WHY_ANALOG)
        for v in eqn.outvars:
            kinds[v] = out
    return seen, [kind(v) for v in jaxpr.outvars]
