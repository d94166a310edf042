"""Resume and determinism of the pipeline: a finished run re-evaluates
without training, a run killed mid-epoch resumes exactly, metric rows after
the resume step are discarded, results are never half-written, and 8 devices
give what 1 device gives. (Bad input and its one-line errors:
tests/test_faults.py.)

Runs ``python -m train.main`` in a subprocess with the tiny config of
tests/configs/tiny.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import tiny_run_copy
from tests.helpers import latest_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=tests/configs/tiny.py"


def cli(workdir, *overrides, env=None, timeout=600):
    cmd = [sys.executable, "-m", "train.main", TINY, f"--workdir={workdir}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert last and fragment in last[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
    """This module's copy of the shared uninterrupted tiny run (tests/conftest.py)."""
    return tiny_run_copy(tiny_run, tmp_path_factory, "full")


def test_finished_run_reevaluates_without_training(finished_run):
    import json

    before = json.load(open(finished_run / "results.json"))
    start = time.time()
    proc = cli(finished_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.load(open(finished_run / "results.json"))
    assert after["snn_accuracy"] == before["snn_accuracy"]
    assert "train:" not in proc.stderr   # no training progress was shown
    del start


def test_sigkill_mid_epoch_then_resume_is_exact(finished_run, tmp_path):
    import jax

    cmd = [sys.executable, "-m", "train.main", TINY, f"--workdir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "checkpoints" / "20"   # epoch 1 of 2 has 44 steps: mid-epoch
    deadline = time.time() + 300
    while not checkpoint.is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.is_dir(), "no checkpoint appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "results.json").exists()
    resumed = cli(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stdout + resumed.stderr
    step_a, full = latest_checkpoint(finished_run)
    step_b, again = latest_checkpoint(tmp_path)
    assert step_a == step_b
    leaves_a = jax.tree_util.tree_leaves(full)
    leaves_b = jax.tree_util.tree_leaves(again)
    assert len(leaves_a) == len(leaves_b)
    # Bitwise: the same program on the same machine from the same state is
    # deterministic, and a resume must not change a single bit.
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Every step is logged once, as in the uninterrupted run.
    rows = {}
    for workdir in (finished_run, tmp_path):
        lines = open(workdir / "metrics.jsonl").read().splitlines()
        rows[workdir] = [json.loads(line) for line in lines]
    steps = [r["step"] for r in rows[tmp_path]]
    assert steps == sorted(set(steps)) == [r["step"] for r in rows[finished_run]]
    np.testing.assert_allclose([r["train_loss"] for r in rows[tmp_path]],
                               [r["train_loss"] for r in rows[finished_run]], rtol=1e-6)


def test_metric_rows_after_the_resume_step_are_discarded(tmp_path):
    from train.metric_writer import MetricWriter

    writer = MetricWriter(str(tmp_path))
    for step in (10, 20, 30):
        writer.write(step, train_loss=1.0 / step)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "train_lo')          # cut off by a kill mid-write
    writer.discard_after(20)
    writer.write(30, train_loss=0.5)
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["train_loss"]) for r in rows] == [(10, 0.1), (20, 0.05), (30, 0.5)]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_results_never_half_written(tmp_path):
    from cosjax.files import atomic_write
    from train.evaluation import report

    path = tmp_path / "results.json"
    report.write_json(str(path), {"old": True})

    def failing_write(tmp):
        with open(tmp, "w") as f:
            f.write('{"half": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), failing_write)
    assert report.json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["results.json"]


EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def test_eight_device_snn_evaluation_equals_one_device(finished_run, tmp_path):
    import json
    import shutil

    work = tmp_path / "eight"
    shutil.copytree(finished_run, work)
    os.remove(work / "results.json")
    proc = cli(work, "--config.mode=eval", "--config.snn.iterations=(1,2)", env=EIGHT_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.load(open(work / "results.json"))
    assert eight["num_devices"] == 8
    one_proc = cli(finished_run, "--config.mode=eval", "--config.snn.iterations=(1,2)")
    assert one_proc.returncode == 0, one_proc.stderr[-3000:]
    one = json.load(open(finished_run / "results.json"))
    assert one["num_devices"] == 1
    assert eight["num_test_images"] == one["num_test_images"] == 360
    # Discrete counts: sharding changes rounding at most, which moves no argmax.
    assert eight["ann_accuracy"] == one["ann_accuracy"]
    assert eight["snn_accuracy"] == one["snn_accuracy"]
    assert set(eight["snn_accuracy"]) == {"plain", "cos_rho2_k1", "cos_rho2_k2"}


def test_eight_device_training_follows_one_device(finished_run, tmp_path):
    import json

    proc = cli(tmp_path, env=EIGHT_DEVICES)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def losses(workdir):
        rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}

    one, eight = losses(finished_run), losses(tmp_path)
    first = sorted(one)[:3]
    assert first == sorted(eight)[:3]
    np.testing.assert_allclose([eight[s] for s in first], [one[s] for s in first], rtol=1e-4)
