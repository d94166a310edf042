"""The prepared accelerator scripts: shell syntax, and the wheel list of
``benchmarks/accelerator_wheels.sh`` against pyproject.toml (nothing the
GPU machine has; every ``train``/``test`` requirement accounted for)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS_SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_wheels.sh")
CHECK_SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.sh")
# Requirements of the extras that are deliberately not brought (see the script's header).
LEFT_OUT = {"tensorflow-datasets", "ruff"}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def script_names(option: str) -> set[str]:
    out = subprocess.run(["bash", WHEELS_SCRIPT, option], capture_output=True, text=True, check=True)
    return {norm(line) for line in out.stdout.split()}


def extra_requirements(extras: list[str]) -> set[str]:
    """Distribution names the extras require, self-references (cosjax[x]) expanded."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        optional = tomllib.load(f)["project"]["optional-dependencies"]
    names, todo = set(), list(extras)
    while todo:
        for req in optional[todo.pop()]:
            name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
            self_ref = re.match(r"cosjax\[(.+)\]", req)
            if self_ref:
                todo += self_ref.group(1).split(",")
            else:
                names.add(norm(name))
    return names


@needs_bash
@pytest.mark.parametrize("script", [WHEELS_SCRIPT, CHECK_SCRIPT])
def test_shell_syntax(script):
    subprocess.run(["bash", "-n", script], check=True)


@needs_bash
def test_wheels_are_only_what_the_machine_lacks():
    wheels, image = script_names("--list"), script_names("--image")
    assert wheels and image
    assert not wheels & image
    unaccounted = extra_requirements(["train", "test"]) - wheels - image - LEFT_OUT
    assert not unaccounted, f"add to the wheel list, or to LEFT_OUT with a reason: {unaccounted}"


@pytest.mark.pipeline
def test_image_folder_run_does_not_import_tfds():
    """tensorflow-datasets is left out of the wheels: the pipeline imports it
    only for TFDS data sets."""
    code = ("import sys, train.main, train.job, benchmarks.input_pipeline, benchmarks.speed, "
            "tests.conftest, tests.helpers; "
            "print('tensorflow_datasets' in sys.modules)")
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": path}, check=True)
    assert out.stdout.strip() == "False"
