"""Jitted, sharded evaluation steps (ANN; SNN plain, COS or static
potentials) and the loop that
sums their counts over a test set. ``train/evaluation/evaluators.py`` builds on them.

Each global batch is padded and masked (``train.data.batching.eval_batches``),
so every test image counts exactly once whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from cosjax import xla_options
from cosjax.methods import IF, Method
from cosjax.simulate import correct_per_step, run_snn
from train import progress
from train.evaluation import tta
from train.sharding import to_global


@dataclasses.dataclass(frozen=True)
class SnnSetting:
    """One SNN evaluation: ``presim`` (rho; tau for SRP), ``iterations`` (k)
    and the conversion ``method`` (:class:`cosjax.Method`); rho = 0 with the
    IF method is plain QCFS conversion."""

    presim: int
    iterations: int = 1
    method: Method = IF

    @property
    def key(self) -> str:
        """The setting's name in results files."""
        if self.method.name == "srp":
            return f"srp_tau{self.presim}"
        if self.method != IF:
            return self.method.label
        return "plain" if self.presim == 0 else f"cos_rho{self.presim}_k{self.iterations}"

    @property
    def label(self) -> str:
        """The setting's name in tables and plots."""
        name, m = self.method.name, self.method.members
        if name == "srp":
            return f"SRP tau={self.presim}"
        if name == "group":
            return f"group neurons m={m}"
        if name == "parallel":
            return "parallel neurons"
        if self.method.signed:
            return "signed IF"
        return ("plain conversion" if self.presim == 0 else
                f"COS rho={self.presim} k={self.iterations}")

    @property
    def per_run(self) -> bool:
        """True where a run gives its accuracy at its last step only (parallel
        neurons): one run per reported T."""
        return self.method.name == "parallel"


METHOD_SPECS = "srp, srp:TAU, group, group:M, parallel, signed"


def method_setting(spec: str, presim: int) -> SnnSetting:
    """The setting of one ``snn.methods`` entry: ``srp`` (tau = ``snn.presim``),
    ``srp:TAU``, ``group`` (m = 4), ``group:M``, ``parallel`` or ``signed``.
    Raises ``ValueError`` naming the entry."""
    name, _, arg = str(spec).partition(":")
    try:
        number = int(arg) if arg else None
    except ValueError:
        number = -1
    if name == "srp" and (number is None or number >= 1):
        tau = presim if number is None else number
        if tau < 1:
            raise ValueError(f"snn.methods entry {spec!r}: SRP needs tau >= 1 (snn.presim is 0; "
                             "write srp:TAU)")
        return SnnSetting(tau, 1, Method("srp"))
    if name == "group" and (number is None or number >= 1):
        return SnnSetting(0, 1, Method("group", members=4 if number is None else number))
    if name in ("parallel", "signed") and not arg:
        return SnnSetting(0, 1, Method("if", signed=True) if name == "signed" else Method(name))
    raise ValueError(f"snn.methods entry {spec!r} is not one of {METHOD_SPECS} "
                     "(TAU, M: ints >= 1)")


def snn_settings(config) -> list[SnnSetting]:
    """Plain conversion, COS with ``snn.presim`` for each ``snn.iterations``,
    then each method of ``snn.methods``."""
    settings = [SnnSetting(0, 1)]
    if config.snn.presim > 0:
        settings += [SnnSetting(config.snn.presim, k) for k in config.snn.iterations]
    settings += [method_setting(spec, config.snn.presim) for spec in method_specs(config)]
    return settings


def method_specs(config) -> list[str]:
    """The entries of ``snn.methods``, comma-separated ones split
    (``--config.snn.methods=srp,group:2`` gives ``["srp", "group:2"]``)."""
    methods = config.snn.methods
    methods = (methods,) if isinstance(methods, str) else methods
    return [part.strip() for spec in methods for part in str(spec).split(",") if part.strip()]


def make_ann_eval_step(model, data_sharding: NamedSharding, replicated: NamedSharding,
                       tta_level: int = 0):
    """``(variables, images [B,H,W,C], labels [B], mask [B]) -> (correct, count)``;
    with ``tta_level > 0`` correct is ``[2]``: without and with test-time
    augmentation (``train/evaluation/tta.py``)."""

    def count_correct(logits, labels, mask):
        # A non-finite example (NaN in the input) is an error, never a class.
        finite = jnp.all(jnp.isfinite(logits), axis=-1)
        return jnp.sum((jnp.argmax(logits, -1) == labels) & mask & finite, dtype=jnp.int32)

    def step(variables, images, labels, mask):
        if tta_level:
            plain, averaged = tta.averaged(lambda x: model.apply(variables, x), images, tta_level)
            correct = jnp.stack([count_correct(plain, labels, mask),
                                 count_correct(averaged, labels, mask)])
        else:
            correct = count_correct(model.apply(variables, images), labels, mask)
        return correct, jnp.sum(mask, dtype=jnp.int32)

    return xla_options.jit(step, in_shardings=(replicated, data_sharding, data_sharding,
                                               data_sharding),
                           out_shardings=replicated)


def snn_eval_step(model, setting: SnnSetting, time_steps: int, micro_batch: int | None = None,
                  unroll: bool = True, tta_level: int = 0) -> Callable:
    """The SNN evaluation step as a plain function, for any jit:
    ``(variables, images, labels, mask) -> (correct [T] for t = 1..T, count)``.

    ``micro_batch`` m: simulate the batch in chunks of m samples inside the
    step (same results, activation memory bounded by ``S * m``); ``unroll``
    as in :func:`cosjax.run_snn`. SRP's T steps follow its tau
    pre-simulation steps; for parallel neurons only the last count is that
    of a ``time_steps``-step run. ``tta_level > 0``: correct is ``[2, T]``,
    without and with test-time augmentation, each view its own simulation
    (``train/evaluation/tta.py``)."""
    steps = setting.method.steps(time_steps, setting.presim)
    first = setting.presim if setting.method.name == "srp" else 0

    def simulate(variables, images):
        outputs, _ = run_snn(model, variables, images, steps=steps, presim=setting.presim,
                             iterations=setting.iterations, micro_batch=micro_batch, unroll=unroll,
                             method=setting.method)
        return outputs[first:first + time_steps]

    def step(variables, images, labels, mask):
        count = jnp.sum(mask, dtype=jnp.int32)
        if not tta_level:
            return correct_per_step(simulate(variables, images), labels, mask), count
        plain, averaged = tta.averaged(lambda x: simulate(variables, x), images, tta_level)
        return (jnp.stack([correct_per_step(plain, labels, mask),
                           correct_per_step(averaged, labels, mask)]), count)

    return step


def make_snn_eval_step(model, setting: SnnSetting, time_steps: int,
                       data_sharding: NamedSharding, replicated: NamedSharding,
                       micro_batch: int | None = None, tta_level: int = 0):
    """:func:`snn_eval_step` jitted with the batch sharded over ``data_sharding``."""
    return xla_options.jit(snn_eval_step(model, setting, time_steps, micro_batch,
                                         tta_level=tta_level),
                           in_shardings=(replicated, data_sharding, data_sharding, data_sharding),
                           out_shardings=replicated)


def static_eval_step(model, time_steps: int, micro_batch: int | None = None,
                     unroll: bool = True) -> Callable:
    """The SNN evaluation step from static initial potentials (no
    pre-simulation), as a plain function for any jit:
    ``(variables, potentials, images, labels, mask) -> (correct [T], count)``.

    ``potentials``: ``{layer: v0 [...neuron shape]}`` (one value per neuron,
    ``cosjax.static_calibration.expand_potentials``), the same for every
    sample: broadcast over the batch inside the step."""

    def step(variables, potentials, images, labels, mask):
        batch = images.shape[0]
        given = {name: jnp.broadcast_to(v0.astype(images.dtype), (batch,) + v0.shape)
                 for name, v0 in potentials.items()}
        outputs, _ = run_snn(model, variables, images, steps=time_steps, presim=0, iterations=1,
                             initial_potentials=given, micro_batch=micro_batch, unroll=unroll)
        return correct_per_step(outputs, labels, mask), jnp.sum(mask, dtype=jnp.int32)

    return step


def make_static_eval_step(model, time_steps: int, data_sharding: NamedSharding,
                          replicated: NamedSharding, micro_batch: int | None = None):
    """:func:`static_eval_step` jitted with the potentials replicated and the
    batch sharded over ``data_sharding``; call it as ``step(variables,
    potentials, images, labels, mask)`` (or bind the potentials with
    ``functools.partial`` for :func:`run_eval`)."""
    return xla_options.jit(static_eval_step(model, time_steps, micro_batch),
                           in_shardings=(replicated, replicated, data_sharding, data_sharding,
                                         data_sharding),
                           out_shardings=replicated)


def run_eval(step_fn, variables, batches: Iterator[dict], num_batches: int,
             data_sharding: NamedSharding, desc: str, global_batch: int) -> tuple[Any, int, float]:
    """Sums ``step_fn``'s (correct, count) over the batches. Returns (summed
    correct counts, number of real examples, seconds)."""
    total, count = None, 0
    start = time.perf_counter()
    bar = progress.Bar(num_batches, desc)
    for batch in batches:
        arrays = to_global(batch, data_sharding)
        correct, seen = jax.device_get(
            step_fn(variables, arrays["image"], arrays["label"], arrays["mask"]))
        correct = np.asarray(correct, dtype=np.int64)
        total = correct if total is None else total + correct
        count += int(seen)
        bar.update(images=global_batch)
    bar.close()
    return total, count, time.perf_counter() - start
