"""Input pipeline benchmark: is the training step fed?

Usage::

    python -m benchmarks.input_pipeline --config=configs/cifar10.py [--config.FIELD=VALUE ...]
        [--workers=0,1,2] [--batches=30] [--steps=30] [--repeats=10] [--synthetic=4096]

No workdir and no download: with ``--config.dataset.name=image_folder
--config.dataset.root=DIR`` the images are read (and decoded) from that
folder; for any other data set the source is ``--synthetic`` random uint8
images of the config's size held in memory (no decoding cost).

Prints, for the config's recipe (``dataset.augment``, ``dataset.autoaugment``,
``dataset.device_augment``, ``dataset.on_device``, batch ``optim.batch_size``):

- host pipeline alone: images/s of ``train.data.batching.train_batches`` for
  each worker count (0 = threads in this process), after two untimed batches;
  with ``dataset.on_device`` instead: the one-off decoding of the training
  set and its transfer to the device, and the rate of the index pipeline
  (``train_indices``), the host's only per-step work;
- device augmentation alone: images/s of the jitted crop, flip,
  normalisation and Cutout (CIFAR recipe), or flip and normalisation
  (ImageNet recipe), on random uint8 images (``train.data.device_augment``);
- training step alone: images/s of the pipeline's jitted training step on one
  batch held on the device (with the device augmentation when it is on, and
  with ``dataset.on_device`` the gather of the batch from the held set);
- end to end: the host pipeline (``config.data_workers``), or the index
  pipeline with ``dataset.on_device``, feeding the step,
  images/s and the share of the wall time spent waiting for the next batch
  (after two untimed batches: the workers' start-up is not counted).

One device, no sharding. Figures are medians of ``--repeats`` calls
(``benchmarks.timing``), except the pipeline rates, which are the count of
images over the wall time of ``--batches`` (or ``--steps``) batches.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import numpy as np
from absl import flags
from jax.sharding import SingleDeviceSharding
from ml_collections import config_flags

from benchmarks import cli
from benchmarks.timing import cores, device_info, interleaved_times
from cosjax import xla_options
from train import architectures, training_loop
from train.data import batching, on_device_set
from train.data.sources import ArraySource, Splits, load_splits
from train.errors import ConfigError
from train.validate import validate_config

USAGE = ("usage: python -m benchmarks.input_pipeline --config=configs/NAME.py "
         "[--config.FIELD=VALUE ...] [--workers=0,1,2]")


def _flags(argv: list[str]) -> flags.FlagValues:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).",
                                    flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workers", "0,1,2", "Worker counts of the host pipeline, comma separated.",
                        flag_values=values)
    flags.DEFINE_integer("batches", 30, "Batches timed per worker count.", flag_values=values)
    flags.DEFINE_integer("steps", 30, "Steps of the end-to-end run.", flag_values=values)
    flags.DEFINE_integer("repeats", 10, "Timed calls of the device augmentation and the step.",
                         flag_values=values)
    flags.DEFINE_integer("synthetic", 4096, "Examples of the synthetic in-memory source.",
                         flag_values=values)
    return cli.parse(values, argv, USAGE)


def splits_for(config, synthetic: int) -> tuple[Splits, str]:
    """The config's image folder, or ``synthetic`` random uint8 images
    ``[N, S, S, 3]`` (S: ``dataset.image_size``, or ``dataset.eval_resize``
    for the ImageNet recipe) with 10 classes."""
    if config.dataset.name == "image_folder":
        return load_splits(config), f"image folder {config.dataset.root}"
    size = config.dataset.eval_resize if config.dataset.augment == "imagenet" else config.dataset.image_size
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (synthetic, size, size, 3), dtype=np.uint8),
                         rng.integers(0, 10, synthetic))
    return Splits(source, source, 10), f"synthetic, {synthetic} random uint8 {size}x{size} images"


def _iterator_rate(it, batch: int, batches: int, warmup: int) -> float:
    """Images/s of ``batches`` batches of ``batch`` examples drawn from ``it``
    after ``warmup`` untimed ones; closes ``it``."""
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    it.close()
    return batches * batch / seconds


def host_rate(splits: Splits, config, workers: int, batches: int) -> float:
    """Images/s of the host pipeline with ``workers`` worker processes."""
    config = config.copy_and_resolve_references()
    config.data_workers = workers
    return _iterator_rate(batching.train_batches(splits, config, 0),
                          config.optim.batch_size, batches, warmup=2)


def index_rate(num_examples: int, config, batches: int) -> float:
    """Images/s of the index pipeline (``dataset.on_device``)."""
    return _iterator_rate(batching.train_indices(num_examples, config, 0),
                          config.optim.batch_size, batches, warmup=1)


def _median_rate(fn, images: int, repeats: int) -> float:
    times = interleaved_times({"fn": fn}, repeats)["fn"]
    return images / statistics.median(times)


def run(config, worker_counts: list[int], batches: int, steps: int, repeats: int,
        synthetic: int) -> list[tuple[str, str]]:
    """The benchmark's rows ``(what, figure)``; prints them as they come."""
    rows = []

    def row(what, figure):
        rows.append((what, figure))
        print(f"| {what} | {figure} |", flush=True)

    splits, described = splits_for(config, synthetic)
    batch = config.optim.batch_size
    config.optim.epochs = max(1, -(-(max(batches, steps) + 4) * batch // len(splits.train)))
    print(device_info())
    on_device = config.dataset.on_device
    print(f"data: {described}; recipe: augment={config.dataset.augment}, autoaugment="
          f"{config.dataset.autoaugment}, device_augment={config.dataset.get('device_augment', False)}, "
          f"on_device={on_device}, batch {batch}, arch {config.model.arch}; "
          f"data_threads={config.data_threads}\n")
    print("| measured | images/s |\n|---|---|")
    if on_device:
        start = time.perf_counter()
        images, labels = on_device_set.decode(splits.train, config)
        held = jax.block_until_ready(on_device_set.put(images, labels,
                                                        SingleDeviceSharding(jax.devices()[0])))
        seconds = time.perf_counter() - start
        row(f"training set to the device, once ({len(images):,} images, "
            f"{images.nbytes / 2**20:.1f} MiB)", f"{len(images) / seconds:,.0f} ({seconds:.1f} s)")
        del images, labels
        row("host pipeline, example indices only", f"{index_rate(len(splits.train), config, batches):,.0f}")
    for workers in ([] if on_device else worker_counts):
        row(f"host pipeline, {workers} worker processes" if workers else
            f"host pipeline, in process ({config.data_threads} threads)",
            f"{host_rate(splits, config, workers, batches):,.0f}")

    augment = batching.device_transform(config, len(splits.train))
    if config.dataset.augment in ("cifar", "imagenet"):
        on = config.copy_and_resolve_references()
        on.dataset.device_augment = True
        apply = xla_options.jit(batching.device_transform(on, len(splits.train)))
        size = config.dataset.image_size
        images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                                                  dtype=np.uint8))
        ops = "crop, flip, normalise, Cutout" if config.dataset.augment == "cifar" else "flip, normalise"
        row(f"device augmentation alone ({ops})",
            f"{_median_rate(lambda: apply(images, np.int32(7)), batch, repeats):,.0f}")

    model = architectures.from_config(config, splits.num_classes)
    _, eval_example = batching.transforms(config)
    shape = eval_example(splits.test[0])["image"].shape
    state = training_loop.create_state(model, config, shape, 1000, jax.devices()[0])
    if on_device:
        indexed = xla_options.jit(training_loop.indexed_train_step(model, augment, config, 1000),
                                  donate_argnums=0)
        step = lambda state, b: indexed(state, held.images, held.labels, b["index"])
        pipeline = lambda: batching.train_indices(len(splits.train), config, 0)
    else:
        plain = xla_options.jit(training_loop.train_step(model, augment, config, 1000),
                                donate_argnums=0)
        step = lambda state, b: plain(state, b["image"], b["label"], b["index"])
        pipeline = lambda: batching.train_batches(splits, config, 0)
    it = pipeline()
    first = jax.device_put(next(it))
    it.close()
    holder = {"state": state}

    def one_step():
        holder["state"], metrics = step(holder["state"], first)
        return metrics

    row("training step alone", f"{_median_rate(one_step, batch, repeats):,.0f}")

    it = pipeline()
    next(it)                       # untimed: starts the threads or worker processes
    next(it)
    jax.block_until_ready(one_step())
    waited = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        b = next(it)
        waited += time.perf_counter() - t
        holder["state"], metrics = step(holder["state"], b)
    jax.block_until_ready(metrics)
    total = time.perf_counter() - start
    it.close()
    fed = "training set on the device" if on_device else f"{config.get('data_workers', 0)} workers"
    row(f"end to end ({fed}), {steps} steps",
        f"{steps * batch / total:,.0f} ({100 * waited / total:.0f}% of the time waiting for input)")
    print(f"\n{cores()} CPU cores for everything (pipeline threads/workers and the step).")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    values = _flags(argv)
    config = values.config
    if config is None:
        print(USAGE, file=sys.stderr)
        return 2
    workers = [int(w) for w in values.workers.split(",") if w.strip()]
    try:
        validate_config(config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = config.copy_and_resolve_references()   # unlocked: the epochs are set to cover the run
    run(config, workers, values.batches, values.steps, values.repeats, values.synthetic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
