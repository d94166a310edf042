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
import jax.numpy as jnp
import numpy as np

from train.data import host_augment
from train.data.sources import SkipBroken, Splits
from train.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def transforms(config) -> tuple[Callable[[dict, np.random.Generator], dict], Callable[[dict], dict]]:
    """Per-example (train, eval) transforms for ``config.dataset.augment``."""
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
    kind = config.dataset.augment
    if kind == "flip_translate":
        # All of it runs in the training step (device_transform); the host sends uint8.
        train_fn = _host_plain
        eval_fn = functools.partial(host_augment.plain_eval, mean=mean, std=std)
    elif kind == "cifar" and config.dataset.device_augment:
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
        raise ConfigError(f"unknown dataset.augment {kind!r}; choose cifar, imagenet, "
                          f"flip_translate or none")

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


def device_transform(config, num_examples: int | None = None
                     ) -> Callable[..., jax.Array] | None:
    """The part of the training augmentation that runs inside the jitted
    training step, or None when the host does all of it.

    ``(images uint8 [B, H, W, 3], step, indices int32 [B] or None) -> float32
    [B, H, W, 3]`` for global batch ``step`` (a traced value, so a resumed run
    draws the same as an uninterrupted one; ``train.data.device_augment``).
    CIFAR recipe with ``dataset.device_augment``: crop (padding 4), flip,
    normalisation and Cutout, keyed by (seed, step, row of the global batch).
    ImageNet recipe (the host has done the random-resized crop): flip and
    normalisation, i.e. the same function with no padding and no Cutout.
    ``flip_translate`` (the fast recipe): translate by up to
    ``dataset.translate`` pixels and flip (alternating over epochs with
    ``dataset.alternating_flip``), keyed by (seed, epoch, example index);
    it needs the ``indices`` and ``num_examples``, the training set's size.
    """
    kind = config.dataset.augment
    seed = config.seed
    mean, std = tuple(config.dataset.mean), tuple(config.dataset.std)
    from train.data import device_augment

    if kind == "flip_translate":
        if not num_examples:
            raise ValueError("the flip_translate augmentation needs the training set's size")
        global_batch = config.optim.batch_size
        translate, alternating = config.dataset.translate, config.dataset.alternating_flip

        def by_example(images, step, indices):
            positions = step * global_batch + jnp.arange(images.shape[0])
            return device_augment.flip_translate(
                images, jax.random.PRNGKey(seed), indices, positions // num_examples,
                translate=translate, alternating=alternating, mean=mean, std=std)

        return by_example
    if not (kind in ("cifar", "imagenet") and config.dataset.device_augment):
        return None
    padding, cutout = (4, config.dataset.cutout) if kind == "cifar" else (0, 0)

    def apply(images, step, indices=None):
        return device_augment.augment(images, device_augment.batch_key(seed, step), padding=padding,
                                      cutout=cutout, mean=mean, std=std)

    return apply


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    return max(1, num_examples // global_batch)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of training example ``index`` (its place in the
    data set) in ``epoch`` of a run seeded with ``seed``: every random draw
    of the host augmentation comes from it, so an example is augmented the
    same way whatever the process count, the batch it falls in or a resume."""
    return np.random.default_rng([seed, epoch, index])


def process_share(process: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(index, count)`` of this process: ``process`` if given (tests), else JAX's."""
    if process is None:
        return jax.process_index(), jax.process_count()
    index, count = process
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in 0..{count - 1}")
    return index, count


def training_examples(num_examples: int, config,
                      process: tuple[int, int] | None = None) -> grain.MapDataset:
    """This process's examples of the whole run, in training order, as
    ``(position, index)`` pairs: ``index`` is the example's place in the data
    set, ``position`` its place in the run's global stream.

    The global stream is the data set, shuffled with ``config.seed`` and
    reshuffled every epoch (the shuffle depends only on the seed and the
    number of examples); global batch ``j`` is positions ``j*G .. (j+1)*G - 1``
    and process ``p`` of ``P`` holds the contiguous slice ``j*G + p*G/P ..
    j*G + (p+1)*G/P - 1`` of it, the rows its devices hold in the global
    array. Row ``r`` of global batch ``j`` is thus position ``j*G + r`` for
    any process count.
    """
    p, count = process_share(process)
    global_batch = config.optim.batch_size
    local_batch = global_batch // count
    order = grain.MapDataset.range(num_examples).seed(config.seed).shuffle().repeat(config.optim.epochs)
    steps = len(order) // global_batch

    def at(k: int) -> tuple[int, int]:
        j, r = divmod(k, local_batch)
        position = j * global_batch + p * local_batch + r
        return position, int(order[position])

    return grain.MapDataset.range(steps * local_batch).map(at)


def train_batches(splits: Splits, config, start_step: int,
                  process: tuple[int, int] | None = None) -> Iterator[Batch]:
    """This process's share of the training batches, from ``start_step`` on.

    The examples and their order are :func:`training_examples`; example
    ``index`` of epoch ``e`` is augmented with :func:`example_rng` ``(seed,
    e, index)``, so the global batch is the same for any number of processes
    and devices. Yields ``{"image": float32 [G/P, H, W, 3], "label": int32
    [G/P], "index": int32 [G/P]}`` (``index``: the examples' places in the
    data set); with ``dataset.device_augment`` the images are uint8 (see
    :func:`device_transform`). ``config.data_workers > 0`` runs the
    per-example work (decoding, augmentation) in that many worker processes;
    the batches are the same. ``process``: ``(index, count)`` to stand for
    JAX's (tests).
    """
    _, count = process_share(process)
    local_batch = config.optim.batch_size // count
    train_example, _ = transforms(config)
    source = SkipBroken(splits.train) if config.dataset.skip_broken else splits.train
    load = functools.partial(_load_training_example, source, train_example, config.seed)
    ds = training_examples(len(source), config, process).map(load)
    ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_stack)
    ds = ds[start_step:].to_iter_dataset(read_options(config))
    workers = config.data_workers
    if workers > 0:
        _absl_flags_ready()
        # Worker w produces batches w, w + W, ... (each still a pure function of
        # its index); they are read back in order.
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=1))
    return iter(ds)


def _load_training_example(source, train_example, seed: int, element: tuple[int, int]) -> dict:
    position, index = element
    epoch = position // len(source)
    example = train_example(source[index], example_rng(seed, epoch, index))
    example["index"] = index
    return example


def train_indices(num_examples: int, config, start_step: int,
                  process: tuple[int, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The example indices of this process's training batches from
    ``start_step`` on, in the order of :func:`train_batches` over a source of
    ``num_examples`` examples: ``{"index": int32 [G/P]}`` per batch, where
    batch ``j`` of ``train_batches`` holds exactly the examples at these
    indices (``dataset.on_device``: the images are gathered on the device).
    Prepared ahead on Grain threads (:func:`read_options`), as the batches
    are: a few µs of Python per example, done while the device computes."""
    _, count = process_share(process)
    local_batch = config.optim.batch_size // count
    ds = training_examples(num_examples, config, process)
    ds = ds.batch(local_batch, drop_remainder=True, batch_fn=_indices)
    return iter(ds[start_step:].to_iter_dataset(read_options(config)))


def _indices(elements: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    return {"index": np.asarray([index for _, index in elements], np.int32)}


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
    batch = {"image": images if images.dtype == np.uint8 else images.astype(np.float32),
             "label": np.asarray([e["label"] for e in examples], np.int32)}
    if "index" in examples[0]:
        batch["index"] = np.asarray([e["index"] for e in examples], np.int32)
    return batch


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
