"""The optimiser of a run: SGD with momentum, its learning-rate schedule,
weight decay, and per-parameter-group learning rates and freezing.

Defaults (every existing config): SGD with momentum, weight decay added to
the gradient (``lr * wd`` per step), cosine decay to 0, one group.

Fast-recipe settings (``configs/cifar10_fast.py``):
  * ``optim.nesterov``: Nesterov momentum (optax's ``sgd(nesterov=True)``);
  * ``optim.weight_decay_mode='decoupled'``: the decay per step is
    ``schedule(t) * wd``, whatever the group's learning rate (each group adds
    ``wd / (lr * multiplier)`` times its parameters to the gradient, which the
    learning rate then scales back); ``'coupled'``: ``schedule(t) * lr *
    multiplier * wd``;
  * ``optim.schedule='triangular'``: linear from ``initial_lr_fraction * lr``
    up to ``lr`` at ``warmup_fraction`` of the steps, then linear down to 0;
  * ``optim.lr_multipliers``: ``"GROUP=FACTOR,..."``, each group's learning
    rate times its factor;
  * ``optim.frozen``: groups that never change (no gradient step, no decay).

A GROUP is one of :data:`GROUPS` or a pattern (``fnmatch``) over a
parameter's path, e.g. ``whiten/*`` or ``*/lam``.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import jax
import optax
from flax import traverse_util

from train.errors import ConfigError

GROUPS = ("bn_scale", "bn_bias", "lam", "kernel", "bias")
"""Named parameter groups: batch-norm scales and biases (parameters of a
module that keeps batch statistics), QCFS thresholds ``lam``, and every
other ``kernel`` and ``bias``."""

SCHEDULES = ("cosine", "triangular")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")


def group_of(path: tuple[str, ...], norm_modules: set[tuple[str, ...]]) -> str:
    """The named group of the parameter at ``path`` (module path + name)."""
    module, name = path[:-1], path[-1]
    if module in norm_modules and name in ("scale", "bias"):
        return f"bn_{name}"
    return name if name in GROUPS else "other"


def _matches(selector: str, path: tuple[str, ...], group: str) -> bool:
    return selector == group if selector in GROUPS else fnmatch.fnmatchcase("/".join(path), selector)


def parse_multipliers(text: str) -> list[tuple[str, float]]:
    """``"bn_bias=64, */lam=2"`` -> ``[("bn_bias", 64.0), ("*/lam", 2.0)]``."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        selector, sep, value = item.partition("=")
        try:
            factor = float(value)
        except ValueError:
            factor = None
        if not sep or not selector.strip() or factor is None or not factor >= 0:
            raise ConfigError(f"optim.lr_multipliers: {item!r} is not GROUP=FACTOR with a factor "
                              f">= 0 (groups: {', '.join(GROUPS)}, or a path pattern such as "
                              f"'whiten/*')")
        out.append((selector.strip(), factor))
    return out


def labels(config, params: Any, batch_stats: Any) -> tuple[Any, dict[str, float | None]]:
    """``(a tree like params of group labels, {label: lr multiplier or None if frozen})``.

    The first matching selector of ``optim.lr_multipliers`` sets a
    parameter's factor (1 if none); ``optim.frozen`` wins over both.
    Raises ``ConfigError`` for a selector that matches no parameter.
    """
    norm_modules = {path[:-1] for path in traverse_util.flatten_dict(batch_stats or {})}
    flat = traverse_util.flatten_dict(params)
    multipliers = parse_multipliers(config.optim.lr_multipliers)
    frozen = tuple(config.optim.frozen)
    used = set()
    out, factors = {}, {}
    for path in flat:
        group = group_of(path, norm_modules)
        factor = 1.0
        for selector, value in multipliers:
            if _matches(selector, path, group):
                factor, _ = value, used.add(selector)
                break
        for selector in frozen:
            if _matches(selector, path, group):
                factor, _ = None, used.add(selector)
        label = "frozen" if factor is None else f"x{factor:g}"
        out[path] = label
        factors[label] = factor
    unused = [s for s, _ in multipliers if s not in used] + [s for s in frozen if s not in used]
    if unused:
        raise ConfigError(f"optim.lr_multipliers / optim.frozen: {unused[0]!r} matches no parameter "
                          f"of {config.model.arch} (groups: {', '.join(GROUPS)}, or a path pattern "
                          f"such as 'whiten/*')")
    return traverse_util.unflatten_dict(out), factors


def schedule(config, total_steps: int) -> optax.Schedule:
    """The learning rate at each step (the base rate ``optim.lr``, factor 1)."""
    opt, total = config.optim, max(total_steps, 1)
    if opt.schedule == "cosine":
        return optax.cosine_decay_schedule(opt.lr, total)
    if opt.schedule == "triangular":
        peak = max(1, int(opt.warmup_fraction * total))
        return optax.join_schedules(
            [optax.linear_schedule(opt.initial_lr_fraction * opt.lr, opt.lr, peak),
             optax.linear_schedule(opt.lr, 0.0, max(total - peak, 1))], [peak])
    raise ConfigError(f"unknown optim.schedule {opt.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def _sgd(config, total_steps: int, factor: float) -> optax.GradientTransformation:
    opt = config.optim
    base = schedule(config, total_steps)
    rate = base if factor == 1 else (lambda step: factor * base(step))
    decay = opt.weight_decay
    if opt.weight_decay_mode == "decoupled" and decay:
        decay = decay / (opt.lr * factor) if factor else 0.0
    return optax.chain(optax.add_decayed_weights(decay),
                       optax.sgd(rate, momentum=opt.momentum, nesterov=opt.nesterov))


def create(config, params: Any, batch_stats: Any, total_steps: int) -> optax.GradientTransformation:
    """The optimiser of ``params``. With one group and no frozen parameters
    (every existing config) it is the plain chain, whose state is what
    earlier checkpoints hold."""
    tree, factors = labels(config, params, batch_stats)
    if set(factors) == {"x1"}:
        return _sgd(config, total_steps, 1.0)
    transforms = {label: optax.set_to_zero() if factor is None else _sgd(config, total_steps, factor)
                  for label, factor in factors.items()}
    return optax.multi_transform(transforms, tree)


def describe_groups(config, params: Any, batch_stats: Any) -> dict[str, int]:
    """``{label: number of parameters}``, e.g. ``{"x1": ..., "x64": ..., "frozen": ...}``."""
    tree, _ = labels(config, params, batch_stats)
    counts: dict[str, int] = {}
    for label, leaf in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(params)):
        counts[label] = counts.get(label, 0) + int(leaf.size)
    return counts
