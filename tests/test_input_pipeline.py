"""The training input pipeline at accelerator speed (issue 13): a prefetch
buffer bounded in batches, worker processes that do not change the batches,
and the pipeline benchmark's smoke run."""

import threading
import time

import numpy as np
import pytest

from configs import default
from train import input_pipeline
from train.data import ArraySource, Splits


class CountingSource:
    """``n`` random CIFAR-size uint8 examples; counts the reads."""

    def __init__(self, n=4096, size=8, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, 10, n)
        self.reads = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        with self._lock:
            self.reads += 1
        return {"image": self.images[index], "label": int(self.labels[index])}


def config_for(batch, **fields):
    config = default.get_config()
    config.dataset.image_size = 8
    config.dataset.cutout = 4
    config.dataset.autoaugment = False
    config.optim.epochs = 1
    config.optim.batch_size = batch
    config.data_threads = 2
    for name, value in fields.items():
        node = config
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.mark.parametrize("batch", [4, 64])
def test_prefetch_buffer_does_not_grow_with_the_batch(batch):
    """After one batch is taken and the threads have had time to fill the
    buffer, the source has been read for at most a few batches ahead
    (``data_prefetch_batches`` + one per thread in flight), not for a number
    of batches proportional to the batch size."""
    source = CountingSource()
    config = config_for(batch, data_prefetch_batches=2)
    assert input_pipeline.read_options(config).prefetch_buffer_size == 2
    batches = input_pipeline.train_batches(Splits(source, source, 10), config, 0)
    next(batches)
    time.sleep(1.0)
    ahead = source.reads / batch - 1
    assert 1 <= ahead <= 2 + config.data_threads + 1, source.reads


def _take(config, start, count):
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 256))
    batches = input_pipeline.train_batches(Splits(source, source, 10), config, start)
    return [next(batches) for _ in range(count)]


@pytest.mark.parametrize("start", [0, 5])
def test_worker_processes_give_the_same_batches(start):
    """Batch j is a pure function of (seed, j): in-process threads and two
    worker processes agree, from the start and from a resumed step."""
    aa = {"dataset.autoaugment": True}
    threads = _take(config_for(8, data_workers=0, **aa), start, 4)
    workers = _take(config_for(8, data_workers=2, **aa), start, 4)
    for a, b in zip(threads, workers, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(threads[0]["image"], threads[1]["image"])
