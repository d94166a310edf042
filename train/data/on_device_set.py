"""The whole training set held on the device (``dataset.on_device``).

For CIFAR-size data sets without AutoAugment nothing per example is left for
the host once crop, flip, normalisation and Cutout run in the training step
(``dataset.device_augment``): the training split is decoded once at the
start, placed on every device as ``uint8`` (replicated: CIFAR-10's 50,000 x
32 x 32 x 3 bytes are 146.5 MiB per device), and each step receives only its
batch's example indices (``batching.train_indices``, the same Grain
order as the host pipeline) and gathers the images on the device. Batch ``j``
holds the same examples, in the same order, as on the host path, so training
gives the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Sharding

from train.data import batching
from train.data.sources import SkipBroken
from train.errors import DataError


class TrainSet(NamedTuple):
    """The training split on the devices: ``images`` uint8 ``[N, H, W, 3]``,
    ``labels`` int32 ``[N]``."""

    images: jax.Array
    labels: jax.Array


def decode(source: Sequence[dict], config, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every example of ``source`` as the host pipeline would send it with
    device augmentation and no AutoAugment (the image as uint8 RGB), decoded
    on ``config.data_threads`` threads.

    Returns ``(images uint8 [N, H, W, 3], labels int32 [N])``. With
    ``dataset.skip_broken`` a broken example is replaced as on the host path
    (``data.SkipBroken``).
    """
    if config.dataset.skip_broken:
        source = SkipBroken(source)
    train_example, _ = batching.transforms(config)
    no_draws = np.random.default_rng(0)    # without AutoAugment the transform draws nothing

    def load(index: int) -> dict:
        return train_example(source[index], no_draws)

    first = load(0)
    images = np.empty((len(source),) + first["image"].shape, np.uint8)
    labels = np.empty((len(source),), np.int32)

    def fill(start: int) -> None:
        for i in range(start, min(start + chunk, len(source))):
            example = load(i)
            if example["image"].shape != first["image"].shape:
                raise DataError(f"training example {i} has shape {example['image'].shape}, example 0 "
                                f"{first['image'].shape}: dataset.on_device needs one image size")
            images[i], labels[i] = example["image"], example["label"]

    with ThreadPoolExecutor(max(1, config.data_threads)) as pool:
        list(pool.map(fill, range(0, len(source), chunk)))
    return images, labels


def put(images: np.ndarray, labels: np.ndarray, replicated: Sharding) -> TrainSet:
    """The arrays on every device of ``replicated`` (each process passes the
    same whole arrays)."""

    def place(array):
        return jax.make_array_from_callback(array.shape, replicated, lambda index: array[index])

    return TrainSet(place(images), place(labels))


def describe(images: np.ndarray) -> str:
    """One line: what is held and its size per device."""
    n, *shape = images.shape
    return (f"training set on the device: {n:,} x {'x'.join(map(str, shape))} uint8 = "
            f"{images.nbytes / 2**20:.1f} MiB on each of {jax.device_count()} device(s)")
