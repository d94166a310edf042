"""The cheap per-example augmentations as jitted array code, run on the device.

Random crop with zero padding, horizontal flip, normalisation and Cutout cost
tens of microseconds per image in NumPy on the host but a few microseconds as
``jnp`` code inside the jitted training step, and they let the host send
``uint8`` images (a quarter of the float32 bytes). What remains on the host is
decoding and, for CIFAR, AutoAugment (PIL); for ImageNet, decoding and the
random-resized crop, the device doing only flip and normalisation (``apply``
with ``padding=0, cutout=0``).

Randomness: example ``i`` of global batch ``step`` draws from
``fold_in(fold_in(PRNGKey(seed), step), i)``, so a batch's augmentation is a
pure function of (seed, step, position in the global batch): independent of
the device count and identical after a resume.

Semantics, per example (``uint8 [H, W, 3]`` -> ``float32 [H, W, 3]``), as in
``train/data/host_augment.py``:

- crop: zero-pad by ``padding`` on each side, take the ``H x W`` window at
  offsets ``(top, left)``, each uniform over ``0 .. 2 * padding``;
- flip: left-right with probability 1/2;
- normalise: ``(x / 255 - mean) / std`` per channel;
- Cutout: rows ``clip(cy - l//2, 0, H) : clip(cy + l//2, 0, H)`` and the same
  for columns, centre ``(cy, cx)`` uniform over the pixels, set to 0 after
  normalisation (the data set's mean colour), as the reference does.

Order against the host pipeline: with device augmentation, AutoAugment runs
on the host *before* crop and flip (the reference applies it after them). The
differences are second order: AutoAugment's geometric operations act on the
uncropped image (their gray fill and the crop's zero padding meet in another
order), and its rotation (always counter-clockwise) meets the flip before
instead of after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Draws(NamedTuple):
    """The random decisions for a batch, each ``int32 [B]`` (flip: bool ``[B]``)."""

    top: jax.Array
    left: jax.Array
    flip: jax.Array
    cutout_y: jax.Array
    cutout_x: jax.Array


def batch_key(seed: int, step: int | jax.Array) -> jax.Array:
    """The key of global batch ``step`` of a run seeded with ``seed``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)


def draw(key: jax.Array, batch: int, height: int, width: int, padding: int) -> Draws:
    """Per-example random decisions for ``batch`` examples of ``height x width``.

    Example ``i`` uses ``fold_in(key, i)``: the draws of one example do not
    depend on the batch size or on how the batch is split over devices.
    """
    def one(i):
        k_top, k_left, k_flip, k_y, k_x = jax.random.split(jax.random.fold_in(key, i), 5)
        return Draws(jax.random.randint(k_top, (), 0, 2 * padding + 1),
                     jax.random.randint(k_left, (), 0, 2 * padding + 1),
                     jax.random.bernoulli(k_flip),
                     jax.random.randint(k_y, (), 0, height),
                     jax.random.randint(k_x, (), 0, width))

    return jax.vmap(one)(jnp.arange(batch))


def crop_flip(images: jax.Array, draws: Draws, padding: int) -> jax.Array:
    """Random crop (zero padding) and flip: ``uint8 [B, H, W, 3]`` -> the same shape."""
    height, width = images.shape[1:3]

    def one(image, d: Draws):
        if padding > 0:
            padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
            image = lax.dynamic_slice(padded, (d.top, d.left, 0), (height, width, 3))
        return jnp.where(d.flip, image[:, ::-1], image)

    return jax.vmap(one)(images, draws)


def cutout_mask(draws: Draws, height: int, width: int, cutout: int) -> jax.Array:
    """``bool [B, H, W]``: True inside each example's Cutout square (none if ``cutout`` is 0)."""
    half = cutout // 2
    rows, cols = jnp.arange(height), jnp.arange(width)

    def one(d: Draws):
        in_rows = ((rows >= jnp.clip(d.cutout_y - half, 0, height))
                   & (rows < jnp.clip(d.cutout_y + half, 0, height)))
        in_cols = ((cols >= jnp.clip(d.cutout_x - half, 0, width))
                   & (cols < jnp.clip(d.cutout_x + half, 0, width)))
        return in_rows[:, None] & in_cols[None, :] & (cutout > 0)

    return jax.vmap(one)(draws)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``uint8 [B, H, W, 3]`` -> ``float32 [B, H, W, 3]``, ``(x / 255 - mean) / std``.

    Agrees with the host's ``augment.normalize`` to a few float32 ulps, not
    bitwise: XLA on CPU divides with a vectorised reciprocal and may fuse a
    multiply and a subtraction into one rounding.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) / jnp.float32(255) - mean) / std


def apply(images: jax.Array, draws: Draws, *, padding: int, cutout: int,
          mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """Crop, flip, normalise and Cutout with the given draws.

    Args:
      images: ``uint8 [B, H, W, 3]``.
      draws: from :func:`draw` for this batch.
      padding: zero padding of the random crop (0: no crop).
      cutout: Cutout side l (0: no Cutout).
      mean, std: per-channel normalisation, 3 values each.
    Returns:
      ``float32 [B, H, W, 3]``.
    """
    height, width = images.shape[1:3]
    x = normalize(crop_flip(images, draws, padding), mean, std)
    return jnp.where(cutout_mask(draws, height, width, cutout)[..., None], 0.0, x)


def augment(images: jax.Array, key: jax.Array, *, padding: int, cutout: int,
            mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """:func:`draw` then :func:`apply`: ``uint8 [B, H, W, 3]`` -> ``float32 [B, H, W, 3]``."""
    batch, height, width = images.shape[:3]
    return apply(images, draw(key, batch, height, width, padding), padding=padding,
                 cutout=cutout, mean=mean, std=std)


def flip_translate(images: jax.Array, key: jax.Array, indices: jax.Array, epochs: jax.Array, *,
                   translate: int, alternating: bool, mean: Sequence[float],
                   std: Sequence[float]) -> jax.Array:
    """airbench's training augmentation: a random translation and a flip, then
    normalisation. ``uint8 [B, H, W, 3]`` -> ``float32 [B, H, W, 3]``.

    Example ``indices[b]`` (its place in the data set) in epoch ``epochs[b]``:
      * translate: reflect-pad by ``translate`` pixels, take the ``H x W``
        window at offsets ``(top, left)``, each uniform over ``0 .. 2 *
        translate``, drawn from ``fold_in(fold_in(key, epoch), index)``;
      * flip: with ``alternating``, flipped in epoch ``e`` when ``f XOR (e
        odd)``, ``f`` a fair coin of ``fold_in(key, index)`` drawn once for
        the run, so each example is seen flipped every other epoch; else a
        fair coin of the epoch's draw.
    """
    height, width = images.shape[1:3]

    def one(image, index, epoch):
        k_top, k_left, k_flip = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, epoch),
                                                                    index), 3)
        if alternating:
            flip = jax.random.bernoulli(jax.random.fold_in(key, index)) ^ (epoch % 2 == 1)
        else:
            flip = jax.random.bernoulli(k_flip)
        if translate > 0:
            padded = jnp.pad(image, ((translate, translate), (translate, translate), (0, 0)),
                             mode="reflect")
            top = jax.random.randint(k_top, (), 0, 2 * translate + 1)
            left = jax.random.randint(k_left, (), 0, 2 * translate + 1)
            image = lax.dynamic_slice(padded, (top, left, 0), (height, width, 3))
        return jnp.where(flip, image[:, ::-1], image)

    return normalize(jax.vmap(one)(images, indices, epochs), mean, std)
