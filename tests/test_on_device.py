"""The training set held on the device (``dataset.on_device``, issue 13): the
same batches as the host pipeline, hence the same parameters; exact resume;
one device against eight."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from tests.helpers import set_fields
from train import architectures, checkpoints, training_loop
from train.data import batching
from train.data.sources import ArraySource, Splits, digits
from train.errors import Interrupted
from train.metric_writer import MetricWriter
from train.sharding import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(**fields):
    """Digits (1,437 training images, 8x8) with the CIFAR recipe minus
    AutoAugment, device augmentation, a tiny ResNet: 44 steps of 32."""
    config = default.get_config()
    config.dataset.name = "digits"
    config.dataset.image_size = 8
    config.dataset.cutout = 4
    config.dataset.autoaugment = False
    config.dataset.device_augment = True
    config.model.arch = "tests.helpers:tiny_resnet"
    config.optim.epochs = 1
    config.optim.batch_size = 32
    config.data_threads = 2
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    set_fields(config, fields)
    return config


def test_indices_name_the_host_pipelines_examples():
    """Batch j of the index pipeline holds the examples of batch j of the
    host pipeline (a source whose label is its index), from any start step,
    over several epochs."""
    n = 100
    source = ArraySource(np.zeros((n, 8, 8, 3), np.uint8), np.arange(n))
    config = config_for(**{"optim.epochs": 3, "optim.batch_size": 8})
    for start in (0, 13):
        host = list(batching.train_batches(Splits(source, source, n), config, start))
        indices = list(batching.train_indices(n, config, start))
        assert len(host) == len(indices) == 300 // 8 - start
        for a, b in zip(host, indices, strict=True):
            assert b["index"].dtype == np.int32
            np.testing.assert_array_equal(a["label"], b["index"])
    assert not np.array_equal(indices[0]["index"], indices[13]["index"])


def test_decoded_set_is_what_the_host_sends():
    from train.data import on_device_set

    splits = digits()
    images, labels = on_device_set.decode(splits.train, config_for(), chunk=100)
    assert images.dtype == np.uint8 and images.shape == (1437, 8, 8, 3) and labels.dtype == np.int32
    np.testing.assert_array_equal(images, splits.train.images)
    np.testing.assert_array_equal(labels, splits.train.labels)
    assert "1,437 x 8x8x3 uint8 = 0.3 MiB" in on_device_set.describe(images)


def _fit(config, workdir, stop_after=0):
    """Trains (or resumes) in ``workdir``; ``stop_after``: a SIGTERM request
    after that many steps of this call. Returns the final parameters and
    batch statistics as NumPy."""
    splits = digits()
    model = architectures.from_config(config, splits.num_classes)
    calls = []

    def stop():
        calls.append(1)
        return signal.SIGTERM if stop_after and len(calls) == stop_after else 0

    writer = MetricWriter(str(workdir))
    try:
        state = training_loop.fit(config, str(workdir), model, splits, make_mesh(), writer, (8, 8, 3),
                            checkpoints.describe(config, splits.num_classes, len(splits.train)),
                            stop_requested=stop)
    finally:
        writer.close()
    return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def _assert_bitwise(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def on_device_run(tmp_path_factory):
    return _fit(config_for(**{"dataset.on_device": True}), tmp_path_factory.mktemp("on_device"))


def test_on_device_trains_exactly_like_the_host_path(on_device_run, tmp_path):
    """44 steps: the same parameters, bitwise, as the host pipeline with
    device augmentation (the same examples per batch, the same draws)."""
    host = _fit(config_for(), tmp_path)
    _assert_bitwise(on_device_run, host)


def test_on_device_resume_is_exact(on_device_run, tmp_path):
    """Stopped (SIGTERM request) after step 20 on the host path, with its
    checkpoint, then resumed with the set on the device (its indices start at
    step 20): the parameters of the uninterrupted on-device run, bitwise.
    ``on_device`` is not part of the recipe: a run may switch at a resume."""
    with pytest.raises(Interrupted):
        _fit(config_for(), tmp_path, stop_after=20)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20"]
    _assert_bitwise(_fit(config_for(**{"dataset.on_device": True}), tmp_path), on_device_run)


EIGHT = """
import json, jax, numpy as np
from tests.test_on_device import config_for
from train import architectures
from train.data import on_device_set
from train.data import batching
from train import training_loop
from train.data.sources import digits
from train.sharding import make_mesh, to_global
splits = digits()
shardings = make_mesh()

def train(on_device):
    config = config_for(**{"dataset.on_device": on_device})
    model = architectures.from_config(config, 10)
    state = training_loop.create_state(model, config, (8, 8, 3), 44, shardings.replicated)
    step, batches = training_loop.feed(config, model, splits, shardings, 0)
    correct = []
    for _ in range(STEPS):
        state, metrics = step(state, to_global(next(batches), shardings.data))
        correct.append(round(float(metrics["accuracy"]) * config.optim.batch_size))
    batches.close()
    return correct, [np.asarray(x).ravel().tolist() for x in jax.tree_util.tree_leaves(state.params)]

correct, leaves = train(True)
host = train(False)
print(json.dumps({"devices": jax.device_count(), "correct": correct, "params": leaves,
                  "same_as_host": host == (correct, leaves)}))
"""


def _eight_or_one(devices, steps):
    env = {**os.environ, "PYTHONPATH": ROOT,
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, "-c", EIGHT.replace("STEPS", str(steps))],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_on_device_on_eight_devices_follows_one_device():
    """The held set replicated on 8 (host-platform) devices and the indices
    sharded: the same correct counts per step as on one device, parameters
    equal to float32 rounding (different compiled programs: batch-norm
    statistics and gradients are summed in another order). On either device
    count the host path gives the same parameters bitwise."""
    one, eight = _eight_or_one(1, 5), _eight_or_one(8, 5)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert one["same_as_host"] and eight["same_as_host"]
    assert eight["correct"] == one["correct"]
    for a, b in zip(eight["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # seen: 9e-8


def test_benchmark_smoke_on_device(capsys):
    """The pipeline benchmark's on-device rows, on tiny sizes; a bad
    combination is one error line."""
    from benchmarks import input_pipeline as bench

    args = ["bench", "--config=tests/configs/tiny.py", "--config.dataset.augment=cifar",
            "--config.dataset.device_augment=True", "--config.dataset.cutout=4",
            "--config.dataset.image_size=8", "--config.optim.batch_size=8",
            "--config.dataset.on_device=True", "--batches=2", "--steps=2", "--repeats=2",
            "--synthetic=64"]
    assert bench.main(args + ["--config.dataset.autoaugment=False"]) == 0
    out = capsys.readouterr().out
    for what in ("training set to the device, once (64 images, 0.0 MiB)",
                 "host pipeline, example indices only", "device augmentation alone",
                 "training step alone", "end to end (training set on the device)"):
        assert f"| {what}" in out, out
    assert "host pipeline, in process" not in out
    assert bench.main(args) == 2
    assert capsys.readouterr().err.strip().startswith("error: dataset.on_device=True needs "
                                                      "dataset.autoaugment=False")
