"""Grain input pipelines: shuffled, augmented training batches that can start at
any step, and padded, masked evaluation batches.

Why Grain rather than tf.data: the reference augmentation (AutoAugment, Cutout)
is written per example in NumPy/PIL (``train/data/host_augment.py``), Grain runs such
Python transforms on threads, its ``MapDataset`` is random access — batch ``j``
of a run is a pure function of (seed, j), so a resumed run continues with
exactly the batches an uninterrupted run would have seen, without saving any
iterator state — and it needs no TensorFlow at run time (TFDS data sets are
read through ``tfds.data_source``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np

from train.data import host_augment
from train.data.sources import SkipBroken, Splits
from train.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def transforms(config) -> tuple[Callable[[dict, np.random.Generator], dict], Callable[[dict], dict]]:
    """Per-example (train, eval) transforms for ``config.dataset.augment``."""
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
    kind = config.dataset.augment
    if kind == "cifar" and config.dataset.device_augment:
        # The host keeps what needs PIL (AutoAugment) and sends uint8; crop,
        # flip, normalisation and Cutout run in the training step (device_transform).
        train_fn = _host_autoaugment if config.dataset.autoaugment else _host_plain
        eval_fn = functools.partial(host_augment.plain_eval, mean=mean, std=std)
    elif kind == "cifar":
        train_fn = functools.partial(host_augment.cifar_train, mean=mean, std=std,
                                     autoaugment=config.dataset.autoaugment,
                                     cutout_length=config.dataset.cutout,
                                     size=config.dataset.image_size)
        eval_fn = functools.partial(host_augment.plain_eval, mean=mean, std=std)
    elif kind == "imagenet":
        size = config.dataset.image_size
        if config.dataset.device_augment:
            # The host decodes and does the random-resized crop, and sends
            # uint8; flip and normalisation run in the training step.
            train_fn = functools.partial(host_augment.random_resized_crop, size=size)
        else:
            train_fn = functools.partial(host_augment.imagenet_train, mean=mean, std=std, size=size)
        eval_fn = functools.partial(host_augment.imagenet_eval, mean=mean, std=std,
                                    resize=config.dataset.eval_resize, crop=size)
    elif kind == "none":
        train_fn = lambda image, rng: host_augment.plain_eval(image, mean=mean, std=std)  # noqa: E731
        eval_fn = functools.partial(host_augment.plain_eval, mean=mean, std=std)
    else:
        raise ConfigError(f"unknown dataset.augment {kind!r}; choose cifar, imagenet or none")

    def train_example(example, rng):
        return {"image": train_fn(example["image"], rng), "label": example["label"]}

    def eval_example(example):
        return {"image": eval_fn(example["image"]), "label": example["label"]}

    return train_example, eval_example


def _host_autoaugment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3]: AutoAugment only (device augmentation)."""
    return host_augment.cifar10_autoaugment(image, rng)


def _host_plain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] -> itself (device augmentation without AutoAugment)."""
    return host_augment.as_rgb(image)


def device_transform(config) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """The part of the training augmentation that runs inside the jitted
    training step, or None when the host does all of it.

    With ``dataset.device_augment``: ``(images uint8 [B, H, W, 3], step) ->
    float32 [B, H, W, 3]`` with the key of global batch ``step``, a traced
    value, so a resumed run draws the same as an uninterrupted one
    (``train.data.device_augment``). CIFAR recipe: crop (padding 4), flip,
    normalisation and Cutout. ImageNet recipe (the host has done the
    random-resized crop): flip and normalisation, i.e. the same function
    with no padding and no Cutout.
    """
    kind = config.dataset.augment
    if not (kind in ("cifar", "imagenet") and config.dataset.device_augment):
        return None
    from train.data import device_augment

    seed = config.seed
    padding, cutout = (4, config.dataset.cutout) if kind == "cifar" else (0, 0)
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)

    def apply(images, step):
        return device_augment.augment(images, device_augment.batch_key(seed, step), padding=padding,
                                      cutout=cutout, mean=mean, std=std)

    return apply


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    return max(1, num_examples // global_batch)


def train_batches(splits: Splits, config, start_step: int) -> Iterator[Batch]:
    """This process's share of the training batches, from ``start_step`` on.

    Global batch ``j`` holds examples ``j*G .. (j+1)*G - 1`` of the seeded,
    per-epoch reshuffled stream; process ``p`` of ``P`` takes every P-th one.
    Yields ``{"image": float32 [G/P, H, W, 3], "label": int32 [G/P]}``; with
    ``dataset.device_augment`` the images are uint8 (see :func:`device_transform`).
    ``config.data_workers > 0`` runs the per-example work (decoding,
    augmentation) in that many worker processes; the batches are the same.
    """
    global_batch = config.optim.batch_size
    local_batch = global_batch // jax.process_count()
    train_example, _ = transforms(config)
    source = SkipBroken(splits.train) if config.dataset.skip_broken else splits.train
    ds = _example_order(grain.MapDataset.source(source), config)
    ds = ds.random_map(train_example).batch(local_batch, drop_remainder=True,
                                             batch_fn=_stack)
    ds = ds[start_step:].to_iter_dataset(read_options(config))
    workers = config.data_workers
    if workers > 0:
        _absl_flags_ready()
        # Worker w produces batches w, w + W, ... (each still a pure function of
        # its index); they are read back in order.
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=1))
    return iter(ds)


def _example_order(ds: grain.MapDataset, config) -> grain.MapDataset:
    """The examples of the whole run in training order, this process's share:
    seeded, reshuffled every epoch, every P-th for process p of P. The
    shuffle depends only on (seed, number of examples)."""
    ds = ds.seed(config.seed).shuffle().repeat(config.optim.epochs)
    return ds[jax.process_index()::jax.process_count()]


def train_indices(num_examples: int, config, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """The example indices of this process's training batches from
    ``start_step`` on, in the order of :func:`train_batches` over a source of
    ``num_examples`` examples: ``{"index": int32 [G/P]}`` per batch, where
    batch ``j`` of ``train_batches`` holds exactly the examples at these
    indices (``dataset.on_device``: the images are gathered on the device).
    Prepared ahead on Grain threads (:func:`read_options`), as the batches
    are: a few µs of Python per example, done while the device computes."""
    local_batch = config.optim.batch_size // jax.process_count()
    ds = _example_order(grain.MapDataset.range(num_examples), config)
    ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_indices)
    return iter(ds[start_step:].to_iter_dataset(read_options(config)))


def _indices(indices: list[int]) -> dict[str, np.ndarray]:
    return {"index": np.asarray(indices, np.int32)}


def _absl_flags_ready() -> None:
    """Grain's worker processes read absl flags; outside an absl program
    (tests, notebooks) their defaults are taken as parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def read_options(config) -> grain.ReadOptions:
    """Threads and prefetch buffer of the training pipeline. The buffer is
    counted in *batches* (Grain counts the dataset's elements, and after
    ``.batch()`` those are batches): ``config.data_prefetch_batches`` of them,
    or ``data_threads`` if more (each thread fills one batch, and Grain uses
    no more threads than buffer slots), whatever the batch size, so host
    memory stays bounded."""
    return grain.ReadOptions(num_threads=config.data_threads,
                             prefetch_buffer_size=max(config.data_prefetch_batches,
                                                      config.data_threads))


def _stack(examples: list[dict[str, Any]]) -> Batch:
    images = np.stack([e["image"] for e in examples])
    return {"image": images if images.dtype == np.uint8 else images.astype(np.float32),
            "label": np.asarray([e["label"] for e in examples], np.int32)}


def eval_batches(source, config, global_batch: int) -> tuple[int, Iterator[Batch]]:
    """Padded evaluation batches covering every test example exactly once.

    Global batch ``j`` covers indices ``j*G .. (j+1)*G - 1``; this process
    takes its contiguous ``G/P`` slice. Indices past the end are padding:
    zero images with ``mask`` False.
    With ``dataset.skip_broken`` a broken example (``DataError``) is masked
    out like padding.
    Returns ``(num_batches, iterator of {"image", "label", "mask" [G/P]})``.
    """
    num = len(source)
    local = global_batch // jax.process_count()
    num_batches = math.ceil(num / global_batch)
    _, eval_example = transforms(config)
    offset = jax.process_index() * local
    skip = config.dataset.skip_broken
    first = eval_example(SkipBroken(source)[0] if skip else source[0])

    def load(j: int) -> Batch:
        indices = j * global_batch + offset + np.arange(local)
        valid = indices < num
        images = np.zeros((local,) + first["image"].shape, np.float32)
        labels = np.zeros((local,), np.int32)
        for row in np.nonzero(valid)[0]:
            try:
                example = eval_example(source[int(indices[row])])
            except DataError:
                if not skip:
                    raise
                valid[row] = False
                continue
            images[row], labels[row] = example["image"], example["label"]
        return {"image": images, "label": labels, "mask": valid}

    ds = grain.MapDataset.range(num_batches).map(load)
    options = grain.ReadOptions(num_threads=config.data_threads,
                                prefetch_buffer_size=max(2, config.data_threads))
    return num_batches, iter(ds.to_iter_dataset(options))
