"""The training input pipeline at accelerator speed (issue 13): a prefetch
buffer bounded in batches, worker processes that do not change the batches,
and the pipeline benchmark's smoke run."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import default
from tests.helpers import latest_checkpoint, set_fields
from train.data import batching
from train.data.sources import ArraySource, Splits


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
    set_fields(config, fields)
    return config


@pytest.mark.parametrize("batch", [4, 64])
def test_prefetch_buffer_does_not_grow_with_the_batch(batch):
    """After one batch is taken and the threads have had time to fill the
    buffer, the source has been read for at most a few batches ahead
    (``data_prefetch_batches`` + one per thread in flight), not for a number
    of batches proportional to the batch size."""
    source = CountingSource()
    config = config_for(batch, data_prefetch_batches=2)
    assert batching.read_options(config).prefetch_buffer_size == 2
    batches = batching.train_batches(Splits(source, source, 10), config, 0)
    next(batches)
    # Wait until the threads stop reading (the buffer is full), at most 10 s.
    deadline, last = time.time() + 10, -1
    while source.reads != last and time.time() < deadline:
        last = source.reads
        time.sleep(0.5)
    ahead = source.reads / batch - 1
    assert 1 <= ahead <= max(2, config.data_threads) + config.data_threads + 1, source.reads


def _take(config, start, count):
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 256))
    batches = batching.train_batches(Splits(source, source, 10), config, start)
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


def test_device_augment_host_sends_autoaugmented_uint8():
    """With device augmentation the host's batch is the uint8 image after
    AutoAugment only (the same draws per example), and the step's transform is
    ``device_augment.augment`` with the key of (seed, step)."""
    import jax

    from train.data import device_augment

    config = config_for(8, **{"dataset.device_augment": True, "dataset.autoaugment": True})
    batch = _take(config, 3, 1)[0]
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 8, 8, 3)
    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 256))
    plain = _take(config_for(8, **{"dataset.device_augment": True, "dataset.autoaugment": False}), 3, 1)[0]
    changed = (plain["image"] != batch["image"]).any(axis=(1, 2, 3))
    assert changed.any() and not changed.all()     # AutoAugment fires for some examples only
    originals = {source.images[i].tobytes() for i in range(len(source))}
    assert all(image.tobytes() in originals for image in plain["image"])

    apply = batching.device_transform(config)
    got = jax.jit(apply)(batch["image"], np.int32(3))
    want = device_augment.augment(batch["image"], device_augment.batch_key(config.seed, 3), padding=4,
                                  cutout=4, mean=config.dataset.mean, std=config.dataset.std)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
    assert batching.device_transform(config_for(8)) is None


# --- exact resume with device augmentation and worker processes ------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_AUGMENT = ["--config=tests/configs/tiny.py", "--config.dataset.augment=cifar",
                  "--config.dataset.device_augment=True", "--config.dataset.cutout=4"]


def _cli(workdir, *overrides):
    return subprocess.run([sys.executable, "-m", "train.main", *DEVICE_AUGMENT, f"--workdir={workdir}",
                           *overrides], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_sigkill_then_resume_is_exact_with_device_augment_and_workers(tmp_path):
    """A tiny run (2 epochs on digits, 88 steps) with device augmentation:
    uninterrupted with threads, against one with 2 worker processes killed
    (SIGKILL) after its checkpoint at step 20 and resumed with threads. The
    final parameters agree bitwise and every step is logged once."""
    import jax

    full = tmp_path / "full"
    proc = _cli(full)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "killed"
    killed = subprocess.Popen([sys.executable, "-m", "train.main", *DEVICE_AUGMENT, f"--workdir={work}",
                               "--config.data_workers=2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = work / "checkpoints" / "20"
    deadline = time.time() + 300
    while not checkpoint.is_dir() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.1)
    assert checkpoint.is_dir(), "no checkpoint appeared"
    os.killpg(killed.pid, signal.SIGKILL)     # the run and its Grain workers
    killed.wait()
    assert not (work / "results.json").exists()
    resumed = _cli(work)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stdout + resumed.stderr
    (step_a, a), (step_b, b) = latest_checkpoint(full), latest_checkpoint(work)
    assert step_a == step_b == 88
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [[json.loads(line)["step"] for line in open(w / "metrics.jsonl")] for w in (full, work)]
    assert steps[0] == steps[1] == sorted(set(steps[0]))


def test_the_run_names_its_devices():
    import jax

    from train import job

    line = job.devices_line()
    assert "\n" not in line and f"{jax.device_count()} x " in line
    if jax.default_backend() == "cpu":
        assert line.startswith("running on CPU") and "[train,cuda12]" in line and "[train,tpu]" in line


def test_benchmark_smoke(capsys):
    """The pipeline benchmark runs on tiny sizes and prints every row."""
    from benchmarks import input_pipeline as bench

    status = bench.main(["bench", "--config=tests/configs/tiny.py", "--config.dataset.augment=cifar",
                         "--config.dataset.device_augment=True", "--config.dataset.cutout=4",
                         "--config.dataset.image_size=8", "--config.optim.batch_size=8",
                         "--workers=0,1", "--batches=2", "--steps=2", "--repeats=2", "--synthetic=64"])
    assert status == 0
    out = capsys.readouterr().out
    for what in ("host pipeline, in process", "host pipeline, 1 worker processes",
                 "device augmentation alone", "training step alone", "end to end (0 workers)"):
        assert f"| {what}" in out, out
    assert "synthetic, 64 random uint8 8x8 images" in out


def test_image_folder_source_goes_to_worker_processes(tmp_path):
    """An image folder is read in worker processes: the same batches as in process."""
    from PIL import Image

    from train.data.sources import image_folder

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / split / c)
            for i in range(12):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png")
    splits = image_folder(str(tmp_path), (8, 8))
    got = [next(batching.train_batches(splits, config_for(8, data_workers=w), 1)) for w in (0, 1)]
    np.testing.assert_array_equal(got[0]["image"], got[1]["image"])


@pytest.mark.parametrize("fields,fragment", [
    ({"data_workers": -1}, "data_workers"),
    ({"data_prefetch_batches": 0}, "data_prefetch_batches"),
    ({"dataset.device_augment": True, "dataset.augment": "none"},
     "needs dataset.augment='cifar', 'imagenet' or 'flip_translate'"),
    ({"dataset.jpeg_draft": None}, "dataset.jpeg_draft must be True or False"),
    ({"data_workers": 2, "dataset.skip_broken": True}, "use it with data_workers=0"),
])
def test_bad_pipeline_settings(fields, fragment):
    from train.errors import ConfigError
    from train.validate import validate_config

    validate_config(config_for(8))
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        validate_config(config_for(8, **fields))


SHARDED = """
import jax, numpy as np
from tests.test_input_pipeline import config_for
from train.data import batching
from train.sharding import make_mesh
assert jax.device_count() == 8
config = config_for(16, **{"dataset.device_augment": True})
apply = batching.device_transform(config)
images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
shardings = make_mesh()     # the training run's mesh
data = shardings.data
sharded = jax.jit(apply, in_shardings=(data, shardings.replicated), out_shardings=data)
one = jax.jit(apply)(images, np.int32(5))
eight = sharded(jax.device_put(images, data), np.int32(5))
assert len(eight.sharding.device_set) == 8
np.testing.assert_allclose(np.asarray(eight), np.asarray(one), rtol=0, atol=1e-6)
print("ok")
"""


def test_device_augment_does_not_depend_on_the_device_count():
    """The batch split over 8 (host-platform) devices is augmented as on one
    device: per-example keys follow the position in the global batch.
    Different compiled programs: normalisation may differ by float32 ulps."""
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT,
                                            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


# --- the ImageNet recipe on an image folder: reduced-size decoding, device flip/normalise -------

def imagenet_folder(root, per_class=8, size=40):
    """Random 40x40 JPEGs in two classes (train and test)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.jpg", quality=90)


IMAGENET_FOLDER = ["--config.dataset.name=image_folder", "--config.dataset.augment=imagenet",
                   "--config.dataset.image_size=16", "--config.dataset.eval_resize=20",
                   "--config.optim.batch_size=8", "--config.snn.eval_batch_size=8",
                   "--config.optim.epochs=1", "--config.data_threads=1",
                   "--config.snn.time_steps=(1, 2)", "--config.snn.presim=1"]


def imagenet_config(root, **fields):
    config = config_for(8, **{"dataset.name": "image_folder", "dataset.root": str(root),
                              "dataset.augment": "imagenet", "dataset.image_size": 16,
                              "dataset.eval_resize": 20, **fields})
    return config


def test_imagenet_device_augment_batches(tmp_path):
    """Host side of the ImageNet recipe with device augmentation: uint8
    random-resized crops, a pure function of (seed, j) (the same first batch
    twice; a run resumed at step 1 starts with step 1's batch), and exactly
    the crops the host-only recipe normalises (its flip is drawn after the
    crop, so each host-only image is one of the crop, normalised, or its
    mirror image)."""
    from train.data import host_augment
    from train.data.decoding import EncodedImage
    from train.data.sources import load_splits

    imagenet_folder(tmp_path)
    config = imagenet_config(tmp_path, **{"dataset.device_augment": True})
    splits = load_splits(config)
    assert isinstance(splits.train[0]["image"], EncodedImage)     # decoded in the transform
    first = [next(batching.train_batches(splits, config, 0)) for _ in range(2)]
    np.testing.assert_array_equal(first[0]["image"], first[1]["image"])
    assert first[0]["image"].dtype == np.uint8 and first[0]["image"].shape == (8, 16, 16, 3)
    two = batching.train_batches(splits, config, 0)
    next(two)
    resumed = batching.train_batches(splits, config, 1)
    np.testing.assert_array_equal(next(two)["image"], next(resumed)["image"])
    host = next(batching.train_batches(splits, imagenet_config(tmp_path), 0))
    mean, std = config.dataset.mean, config.dataset.std
    for crop, want in zip(first[0]["image"], host["image"], strict=True):
        assert (np.array_equal(host_augment.normalize(crop, mean, std), want)
                or np.array_equal(host_augment.normalize(crop[:, ::-1], mean, std), want))
    np.testing.assert_array_equal(first[0]["label"], host["label"])


def test_imagenet_recipe_trains_with_device_augment_on_jpegs(tmp_path, capsys):
    """The whole run (validation, training with device flip/normalise,
    evaluation) on an ImageNet-style folder of JPEGs decoded at reduced size."""
    from train import main as cli_main

    imagenet_folder(tmp_path / "data")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        status = cli_main.main(["train.main", "--config=tests/configs/tiny.py", *IMAGENET_FOLDER,
                                f"--config.dataset.root={tmp_path / 'data'}",
                                "--config.dataset.device_augment=True", f"--workdir={tmp_path / 'work'}"])
    finally:
        os.chdir(cwd)
    assert status == 0, capsys.readouterr().err[-3000:]
    steps = [json.loads(line) for line in open(tmp_path / "work" / "metrics.jsonl")]
    assert max(s["step"] for s in steps) == 2         # 16 images, batch 8, 1 epoch
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert results["num_test_images"] == 16


@pytest.mark.parametrize("processes", [2, 8])
@pytest.mark.parametrize("device_augment", [False, True])
def test_global_batch_does_not_depend_on_the_process_count(processes, device_augment):
    """Every random draw is keyed by (seed, epoch, example): the shares of
    P processes, stacked in process order (the rows their devices hold in
    the global array), are the one-process batch, augmentation included,
    and the examples of a batch are augmented differently from each other."""
    rng = np.random.default_rng(0)
    n = 64
    source = ArraySource(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n))
    config = config_for(16, autoaugment=True, **{"dataset.device_augment": device_augment})
    config.optim.epochs = 2
    splits = Splits(source, source, 10)
    start = 5                                     # 4 batches per epoch: the second epoch
    one = next(batching.train_batches(splits, config, start))
    shares = [next(batching.train_batches(splits, config, start, process=(p, processes)))
              for p in range(processes)]
    for key in ("image", "label", "index"):
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), one[key])
    indices = list(batching.train_indices(n, config, start, process=(1, processes)))
    np.testing.assert_array_equal(indices[0]["index"], shares[1]["index"])
    # The same example in another epoch is augmented differently.
    first_epoch = batching.train_batches(splits, config, 0)
    again = {int(i): img for b in [next(first_epoch) for _ in range(n // 16)]
             for i, img in zip(b["index"], b["image"])}
    if not device_augment:
        differs = [not np.array_equal(again[int(i)], img)
                   for i, img in zip(one["index"], one["image"]) if int(i) in again]
        assert differs and np.mean(differs) > 0.5


def test_example_rng_is_keyed_by_seed_epoch_and_example():
    draws = {key: batching.example_rng(*key).integers(1 << 30) for key in
             [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]}
    assert len(set(draws.values())) == 4
    assert batching.example_rng(0, 1, 0).integers(1 << 30) == draws[(0, 1, 0)]
