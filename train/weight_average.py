"""Averages of the weights over training: EMA and Lookahead (``optim.average``).

Both keep one running average ``a`` of the parameters *and* batch-norm
statistics, updated every ``optim.average_every`` steps ``t``::

    a <- d(t) * a + (1 - d(t)) * w,    d(t) = optim.average_decay * (t / total)**3

(computed as ``a + (1 - d) (w - a)``, exact for weights that do not change)

so the average follows the weights closely early in training and smooths
more towards the end (airbench's schedule: ``0.95**5`` every 5 steps).
``"lookahead"`` then also sets the weights to the average at each update
(the weights continue from there); ``"ema"`` leaves them alone. After the
last step the weights are the average in both cases, so the checkpoint and
every evaluation use it.

optax's ``lookahead`` has a fixed sync rate and sees the parameters only,
not the batch statistics; hence this small pure function.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

MODES = ("none", "ema", "lookahead")


def initial(config, params: Any, batch_stats: Any) -> Any:
    """The average's initial value, or None when ``optim.average`` is ``"none"``."""
    if config.optim.average == "none":
        return None
    # Own buffers: the training step donates the state, and a buffer given twice is refused.
    return jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})


def decay(config, step: jax.Array, total_steps: int) -> jax.Array:
    """``d(t)``: the average's weight at step ``t`` (float32)."""
    fraction = jnp.asarray(step, jnp.float32) / max(total_steps, 1)
    return config.optim.average_decay * fraction ** 3


def update(config, state, total_steps: int):
    """``state`` after its step ``state.step`` (already counted): the average
    updated when the step is due, the weights replaced by it where the mode
    says so. A pure function of the state, so a resumed run matches."""
    if state.average is None:
        return state
    step = state.step
    weights = {"params": state.params, "batch_stats": state.batch_stats}
    d = decay(config, step, total_steps)
    due = step % config.optim.average_every == 0
    # a + (1 - d)(w - a): a weight that never changes (a frozen one) stays bit-exact.
    average = jax.tree.map(lambda a, w: jnp.where(due, a + (1 - d) * (w - a), a), state.average,
                           weights)
    final = step >= total_steps
    replace = (due | final) if config.optim.average == "lookahead" else final
    weights = jax.tree.map(lambda a, w: jnp.where(replace, a, w), average, weights)
    return state.replace(params=weights["params"], batch_stats=weights["batch_stats"], average=average)
