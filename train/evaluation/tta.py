"""Test-time augmentation: a test image is classified from several views of
it, the network's outputs averaged with fixed weights (``snn.tta``).

Levels (airbench's):
  * 1: the image and its mirror image, weight 1/2 each;
  * 2: those two at 1/4 each, and the image shifted one pixel up-left and
    one pixel down-right (reflection at the border), each with its mirror,
    at 1/8 each: 6 views.

For an SNN every view is its own simulation (its own spikes, its own
pre-simulation for COS): the outputs ``[T, B, K]`` of the views are averaged
step by step, so TTA multiplies the SNN's work (not its latency) by the
number of views.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = (0, 1, 2)


def _mirror(images: jax.Array) -> jax.Array:
    return images[:, :, ::-1]


def views(images: jax.Array, level: int) -> list[tuple[float, jax.Array]]:
    """``[(weight, view [B, H, W, C])]`` of ``images [B, H, W, C]``; the
    first view is the image itself; the weights sum to 1."""
    if level not in LEVELS:
        raise ValueError(f"TTA level must be one of {LEVELS}, got {level!r}")
    if level == 0:
        return [(1.0, images)]
    out = [(0.5, images), (0.5, _mirror(images))]
    if level == 1:
        return out
    height, width = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, :height, :width], padded[:, 2:height + 2, 2:width + 2]]
    return ([(0.25, images), (0.25, _mirror(images))]
            + [(0.125, view) for s in shifted for view in (s, _mirror(s))])


def number_of_views(level: int) -> int:
    return {0: 1, 1: 2, 2: 6}[level]


def averaged(apply, images: jax.Array, level: int) -> tuple[jax.Array, jax.Array]:
    """``(apply(images), the weighted mean of apply over the views)``:
    ``apply`` maps ``[B, H, W, C]`` to outputs whose weighted sum is taken
    (logits ``[B, K]`` or SNN outputs ``[T, B, K]``)."""
    weighted = views(images, level)
    first = apply(weighted[0][1])
    total = weighted[0][0] * first
    for weight, view in weighted[1:]:
        total = total + weight * apply(view)
    return first, total
