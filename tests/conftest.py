"""Shared test set-up: the opt-in float64 fixture, a tiny QCFS network
trained on real data, and the split between library and pipeline tests.

The library tests (``cosjax``) need only the library's dependencies
(``pip install -e '.[test-lib]'``). Tests of the pipeline (``train/``,
``configs/``, ``benchmarks/``, ``examples/``) live in the files of
``PIPELINE_TEST_FILES`` or carry ``@pytest.mark.pipeline``; without the
pipeline's packages they are not collected, or skipped, and the header says so.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import helpers

PIPELINE_PACKAGES = ("ml_collections", "absl", "orbax", "grain", "tensorflow_datasets", "PIL")
PIPELINE_TEST_FILES = (
    "test_aot.py", "test_augment.py", "test_benchmarks.py", "test_configs.py", "test_decode.py",
    "test_device_augment.py", "test_faults.py", "test_input_pipeline.py", "test_on_device.py",
    "test_performance_paths.py", "test_pipeline.py", "test_progress.py", "test_resume.py",
    "test_sharded_snn.py", "test_static_pipeline.py")
MISSING = [name for name in PIPELINE_PACKAGES if importlib.util.find_spec(name) is None]
collect_ignore = list(PIPELINE_TEST_FILES) if MISSING else []


def _scope() -> str:
    if MISSING:
        return (f"library tests only: {', '.join(MISSING)} not installed, so the pipeline tests "
                f"({len(PIPELINE_TEST_FILES)} files and those marked 'pipeline') are left out")
    return "library and pipeline tests"


def pytest_report_header(config):
    return _scope()


def pytest_terminal_summary(terminalreporter):
    """The scope again at the end, where ``-q`` (no header) still shows it."""
    terminalreporter.write_line(_scope())


def pytest_collection_modifyitems(config, items):
    if MISSING:
        skip = pytest.mark.skip(reason=f"pipeline test: {', '.join(MISSING)} not installed")
        for item in items:
            if "pipeline" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def x64():
    """Enables float64 in JAX for one test (``def test_foo(x64): ...``)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def trained_digits():
    """A tiny QCFS VGG trained to convergence on scikit-learn's digits."""
    return helpers.train_digits_model(seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The workdir of one uninterrupted ``python -m train.main`` run of
    tests/configs/tiny.py (2 epochs on digits, 88 steps), made once per
    session. Tests take a copy (:func:`tiny_run_copy`) and leave it as it is."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    proc = subprocess.run([sys.executable, "-m", "train.main", "--config=tests/configs/tiny.py",
                           f"--workdir={workdir}"], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def tiny_run_copy(tiny_run, tmp_path_factory, name: str):
    """A private copy of :func:`tiny_run`'s workdir."""
    work = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(tiny_run, work)
    return work
