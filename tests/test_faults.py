"""Fault injection: bad command lines, configs, workdirs, data, checkpoints,
concurrent runs, changed recipes and signals (issue 15).

Every fault must end in exactly one line ``error: ...`` on stderr (or the
documented skip), a non-zero exit status, no traceback, and nothing
half-written. Most faults stop at validation and run in-process through
``train.main.main`` (the same function the command line calls; an uncaught
exception would fail the test); those whose stderr at process exit matters
(corrupted checkpoints, signals, a held lock, the command line itself) run
``python -m train.main`` in a subprocess.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import tiny_run_copy
from tests.helpers import latest_checkpoint
from train import main as cli_main
from train import workdir as workdirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=tests/configs/tiny.py"
ERROR_EXIT = 2


def inproc(capsys, workdir, *args, config=TINY):
    """Runs ``train.main.main`` in this process; returns (status, stderr)."""
    argv = ["train.main"] + ([config] if config else []) + (
        [f"--workdir={workdir}"] if workdir is not None else []) + list(args)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        status = cli_main.main(argv)
    finally:
        os.chdir(cwd)
    return status, capsys.readouterr().err


def subproc(workdir, *args, env=None, timeout=600):
    cmd = [sys.executable, "-m", "train.main", TINY, f"--workdir={workdir}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stderr


PROGRESS = re.compile(r"^(train|ANN eval|SNN \S+|analyze \S+): \d+/\d+ ")


def assert_one_error(status, stderr, fragment, code=ERROR_EXIT):
    """Exit status ``code``; stderr holds progress lines and one last line
    ``error: ...`` (or ``interrupted: ...``) containing ``fragment``, nothing else."""
    assert status == code, stderr[-2000:]
    others = [line for line in stderr.splitlines() if line and not PROGRESS.match(line)]
    assert len(others) == 1, stderr[-2000:]
    assert others[0].startswith(("error: ", "interrupted: ")) and fragment in others[0], others[0]
    assert stderr.rstrip().splitlines()[-1] == others[0], stderr[-2000:]
    assert "Traceback" not in stderr


def assert_nothing_written(workdir):
    """No results, no checkpoints, no temporary files (a lock file may stay)."""
    if os.path.isdir(workdir):
        assert set(os.listdir(workdir)) <= {workdirs.LOCK_NAME}, os.listdir(workdir)


# --- command line and config: each stops before any work --------------------------------------

CONFIG_FAULTS = [
    ("--config.optim.lrr=0.1", "unknown config field 'optim.lrr'; did you mean 'optim.lr'?"),
    ("--config.snn.tim_steps=(1,2)", "did you mean 'snn.time_steps'?"),
    ("--config.optim.epochs=abc", "invalid literal for int()"),
    ("--config.seed=1.5", "invalid literal for int()"),
    ("--config.dataset.autoaugment=maybe", "--config.dataset.autoaugment"),
    ("--bogus=1", "Unknown command line flag 'bogus'"),
    ("stray_argument", "unexpected arguments: stray_argument"),
    ("--config.mode=train", "unknown mode 'train'"),
    ("--config.precision=fp8", "unknown precision 'fp8'"),
    ("--config.model.arch=vgg99", "unknown architecture 'vgg99'"),
    ("--config.model.arch=no_such_module:net", "cannot import 'no_such_module'"),
    ("--config.model.arch=tests.helpers:no_such_net", "has no function 'no_such_net'"),
    ("--config.model.arch=", "unknown architecture ''"),
    ("--config.model.levels=0", "model.levels (L) must be an int >= 1"),
    ("--config.dataset.name=mnist", "unknown data set 'mnist'"),
    ("--config.dataset.augment=foo", "unknown dataset.augment 'foo'"),
    ("--config.dataset.mean=(0.5,0.5)", "dataset.mean must hold 3 values"),
    ("--config.dataset.mean=('a','b','c')", "dataset.mean must be a finite number, got 'a'"),
    ("--config.dataset.std=(0.5,0.0,0.5)", "dataset.std must be a finite number > 0.0"),
    ("--config.dataset.train_split=", "dataset.train_split must be a non-empty string"),
    ("--config.dataset.image_size=0", "dataset.image_size must be an int >= 1"),
    ("--config.seed=-1", "seed must be an int >= 0"),
    ("--config.data_threads=0", "data_threads must be an int in [1, 256]"),
    ("--config.optim.epochs=0", "optim.epochs must be an int >= 1"),
    ("--config.optim.batch_size=0", "optim.batch_size must be an int >= 1"),
    ("--config.optim.lr=-0.1", "optim.lr must be a finite number > 0.0"),
    ("--config.optim.lr=nan", "optim.lr must be a finite number > 0.0, got nan"),
    ("--config.optim.momentum=1.5", "optim.momentum must be a finite number in [0.0, 1.0)"),
    ("--config.optim.weight_decay=-1e-4", "optim.weight_decay must be a finite number >= 0.0"),
    ("--config.snn.time_steps=()", "snn.time_steps (T) must list at least one value"),
    ("--config.snn.time_steps=(0,2)", "snn.time_steps (T) must be an int >= 1"),
    ("--config.snn.iterations=(0,)", "snn.iterations (k) must be an int >= 1"),
    ("--config.snn.iterations=()", "snn.iterations (k) must list at least one value"),
    ("--config.snn.presim=-1", "snn.presim (rho) must be an int >= 0"),
    ("--config.snn.eval_batch_size=0", "snn.eval_batch_size must be an int >= 1"),
    ("--config.snn.micro_batch=-2", "snn.micro_batch must be an int >= 0"),
    ("--config.snn.max_eval_examples=-1", "snn.max_eval_examples must be an int >= 0"),
    ("--config.analysis.window=-1", "analysis.window must be an int >= 0"),
    ("--config.snn.static.window=0", "snn.static.window (W) must be an int >= 1"),
    ("--config.snn.static.estimator=median", "unknown snn.static.estimator 'median'"),
    ("--config.snn.static.granularity=pixel", "unknown snn.static.granularity 'pixel'"),
    ("--config.snn.static.calib_size=0", "snn.static.calib_size must be an int >= 1"),
    ("--config.snn.static.clip_range=(1.0,0.0)", "snn.static.clip_range must have lo <= hi"),
    ("--config.snn.static.potentials=v0.npz", "snn.static.potentials is set but "
                                              "snn.static.enabled is False"),
    ("--config.log_every_steps=0", "log_every_steps must be an int >= 1"),
    ("--config.checkpoint_every_steps=0", "checkpoint_every_steps must be an int >= 1"),
    ("--config.keep_checkpoints=0", "keep_checkpoints must be an int >= 1"),
    ("--config.init_from=model.pth", "init_from evaluates an imported checkpoint"),
]


@pytest.mark.parametrize("arg,fragment", CONFIG_FAULTS, ids=[a for a, _ in CONFIG_FAULTS])
def test_config_fault(capsys, tmp_path, arg, fragment):
    status, err = inproc(capsys, tmp_path / "work", arg)
    assert_one_error(status, err, fragment)
    assert not (tmp_path / "work").exists()


CROSS_FIELD_FAULTS = [
    (("--config.optim.batch_size=5000",), "optim.batch_size=5000 is larger than the training set "
                                          "(1437 examples)"),
    (("--config.dataset.image_size=16",), "dataset.image_size=16 but the train images are 8x8"),
    (("--config.dataset.augment=cifar", "--config.dataset.cutout=9"),
     "dataset.cutout must be an int in [0, 8]"),
    (("--config.dataset.augment=imagenet", "--config.dataset.eval_resize=4"),
     "dataset.eval_resize=4 is smaller than the centre crop"),
    (("--config.snn.static.enabled=True", "--config.snn.static.calib_size=5000"),
     "snn.static.calib_size=5000 is larger than the training set (1437 examples)"),
    (("--config.snn.static.enabled=True", "--config.snn.static.potentials=no_such_file.npz"),
     "snn.static.potentials file 'no_such_file.npz' does not exist"),
    (("--config.snn.static.enabled=True", "--config.snn.static.potentials=tests"),
     "snn.static.potentials 'tests' is not a file"),
    (("--config.mode=eval", "--config.init_from=no_such_file.pth"),
     "init_from file 'no_such_file.pth' does not exist"),
    (("--config.mode=eval", "--config.init_from=tests"), "init_from 'tests' is not a file"),
    (("--config.dataset.name=cifar10", "--config.dataset.root=no_such_tfds_dir"),
     "TFDS data set 'cifar10' is not prepared in data_dir=no_such_tfds_dir"),
    (("--config.dataset.name=image_folder",), "image folder root '' does not exist; set "
                                              "--config.dataset.root"),
    (("--config.dataset.on_device=True",), "dataset.on_device=True needs dataset.augment='cifar'"),
    (("--config.dataset.augment=cifar", "--config.dataset.cutout=4", "--config.dataset.on_device=True"),
     "dataset.on_device=True needs dataset.device_augment=True"),
    (("--config.dataset.augment=imagenet", "--config.dataset.device_augment=True",
      "--config.dataset.on_device=True"), "dataset.on_device=True needs dataset.augment='cifar'"),
    (("--config.dataset.augment=cifar", "--config.dataset.cutout=4", "--config.dataset.device_augment=True",
      "--config.dataset.on_device=True"),
     "needs dataset.autoaugment=False: AutoAugment runs on the host per image"),
    (("--config.dataset.augment=cifar", "--config.dataset.cutout=4", "--config.dataset.device_augment=True",
      "--config.dataset.autoaugment=False", "--config.dataset.on_device=True",
      "--config.data_workers=2"),
     "dataset.on_device=True leaves no per-example work to the host: set data_workers=0"),
    (("--config.mode=eval",), "no checkpoint in"),
    (("--config.mode=analyze",), "no checkpoint in"),
]


@pytest.mark.parametrize("args,fragment", CROSS_FIELD_FAULTS,
                         ids=[" ".join(a) for a, _ in CROSS_FIELD_FAULTS])
def test_cross_field_fault(capsys, tmp_path, args, fragment):
    status, err = inproc(capsys, tmp_path / "work", *args)
    assert_one_error(status, err, fragment)
    assert_nothing_written(tmp_path / "work")


# Static potentials given as a file (snn.static.potentials): checked against
# the tiny ResNet before any training. Its spiking layers and neuron shapes:
TINY_LAYERS = {"stem_act": (8, 8, 4), "stage1_block0/act1": (8, 8, 4),
               "stage1_block0/act2": (8, 8, 4), "stage2_block0/act1": (4, 4, 8),
               "stage2_block0/act2": (4, 4, 8)}


def _save_v0(path, potentials):
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in potentials.items()})


STATIC_FILE_FAULTS = [
    ("not-npz", lambda p: p.write_text("not arrays"),
     "snn.static.potentials: cannot read static potentials from '{path}': not a .npz file"),
    ("npy", lambda p: np.save(open(p, "wb"), np.zeros(3)), "not a .npz file"),
    ("unknown-layer", lambda p: _save_v0(p, {**{k: 0.5 for k in TINY_LAYERS}, "fc_act": 0.5}),
     "snn.static.potentials '{path}' does not fit the model: unknown layer(s) fc_act (the "
     "model's spiking layers: stem_act, stage1_block0/act1,"),
    ("missing-layer", lambda p: _save_v0(p, {"stem_act": 0.5}),
     "no potential for layer(s) stage1_block0/act1, stage1_block0/act2, stage2_block0/act1, "
     "stage2_block0/act2"),
    ("wrong-shape", lambda p: _save_v0(p, {k: np.zeros(s[:-1] + (3,)) for k, s in
                                           TINY_LAYERS.items()}),
     "potential of layer 'stem_act' has shape (8, 8, 3); expected (8, 8, 4) (per neuron)"),
    ("integers", lambda p: np.savez(p, **{k: np.zeros(4, np.int32) for k in TINY_LAYERS}),
     "the potential of layer(s) stem_act, "),
]


@pytest.mark.parametrize("damage,fragment", [f[1:] for f in STATIC_FILE_FAULTS],
                         ids=[f[0] for f in STATIC_FILE_FAULTS])
def test_bad_static_potentials_file(capsys, tmp_path, damage, fragment):
    path = tmp_path / "v0.npz"
    damage(path)
    status, err = inproc(capsys, tmp_path / "work", "--config.snn.static.enabled=True",
                         f"--config.snn.static.potentials={path}")
    assert_one_error(status, err, fragment.format(path=path))
    assert_nothing_written(tmp_path / "work")


def test_missing_config_file(capsys, tmp_path):
    status, err = inproc(capsys, tmp_path, config="--config=configs/no_such_config.py")
    assert_one_error(status, err, "config file 'configs/no_such_config.py' not found")


def test_no_config_flag(capsys, tmp_path):
    status, err = inproc(capsys, tmp_path, config=None)
    assert_one_error(status, err, "--config is required")


def test_no_workdir_flag(capsys):
    status, err = inproc(capsys, None)
    assert_one_error(status, err, "--workdir is required")


@pytest.mark.parametrize("source,fragment", [
    ("def get_config(:\n", "cannot load config file"),
    ("x = 1\n", "AttributeError"),
    ("def get_config():\n    raise RuntimeError('boom')\n", "RuntimeError: boom"),
])
def test_broken_config_file(capsys, tmp_path, source, fragment):
    path = tmp_path / "bad_config.py"
    path.write_text(source)
    status, err = inproc(capsys, tmp_path / "work", config=f"--config={path}")
    assert_one_error(status, err, fragment)


def test_command_line_typo_in_a_subprocess(tmp_path):
    """The real command line: a misspelt field is one line, exit 2, no traceback."""
    status, err = subproc(tmp_path / "work", "--config.optim.lrr=0.1")
    assert_one_error(status, err, "unknown config field 'optim.lrr'; did you mean 'optim.lr'?")
    assert err.strip() == "error: unknown config field 'optim.lrr'; did you mean 'optim.lr'?"


# --- workdir ---------------------------------------------------------------------------------

def test_workdir_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    status, err = inproc(capsys, tmp_path / "file")
    assert_one_error(status, err, "exists and is not a directory")
    assert (tmp_path / "file").read_text() == "x"


def test_workdir_empty(capsys):
    status, err = inproc(capsys, "")
    assert_one_error(status, err, "--workdir is empty")


def test_workdir_not_creatable(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    status, err = inproc(capsys, tmp_path / "file" / "sub")
    assert_one_error(status, err, "cannot create workdir")


def test_verbose_adds_the_chain_of_causes(capsys, tmp_path, monkeypatch):
    """The one-line error is chained to its cause (``raise ... from err``);
    --verbose or COSJAX_VERBOSE=1 print it below the line, the default does not."""
    (tmp_path / "file").write_text("x")
    status, err = inproc(capsys, tmp_path / "file" / "sub")
    assert_one_error(status, err, "cannot create workdir")
    assert "Traceback" not in err
    for args, env in (("--verbose",), None), ((), "1"):
        if env:
            monkeypatch.setenv("COSJAX_VERBOSE", env)
        status, err = inproc(capsys, tmp_path / "file" / "sub", *args)
        assert status == ERROR_EXIT
        first, rest = err.split("\n", 1)
        assert first.startswith("error: cannot create workdir"), err
        assert "NotADirectoryError" in rest and "direct cause" in rest and "WorkdirError" in rest, rest


def test_workdir_not_writable(capsys, tmp_path):
    if os.geteuid() == 0:
        target = "/proc/self"          # not writable even by root
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    status, err = inproc(capsys, target)
    assert_one_error(status, err, "is not writable")


def test_workdir_in_use(capsys, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with workdirs.Lock(str(tmp_path)):
        status, err = inproc(capsys, tmp_path)
    assert_one_error(status, err, f"workdir {tmp_path} is in use by pid {os.getpid()} on ")
    assert_nothing_written(tmp_path)


# --- image folders with broken files ---------------------------------------------------------

def write_folder(root, train=20, test=5, size=8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in ("a", "b"):
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.jpg", quality=95)


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def empty(path):
    open(path, "w").close()


def text(path):
    with open(path, "w") as f:
        f.write("this is not an image\n")


def other_size(path):
    from PIL import Image

    Image.new("RGB", (9, 8)).save(path)


FOLDER = ("--config.dataset.name=image_folder", "--config.optim.batch_size=8",
          "--config.snn.eval_batch_size=8", "--config.optim.epochs=1")

BROKEN_FILES = [
    ("train/a/007.jpg", truncate, "cannot decode"),
    ("train/b/003.jpg", empty, "empty file"),
    ("train/a/011.jpg", text, "cannot decode"),
    ("train/b/015.jpg", other_size, "8x9 pixels, expected 8x8"),
    ("train/a/000.jpg", text, "cannot decode"),             # the first example: validation
    ("test/a/002.jpg", truncate, "cannot decode"),
    ("test/b/001.jpg", empty, "empty file"),
    ("test/a/004.jpg", text, "cannot identify image file"),
    ("test/b/004.jpg", other_size, "8x9 pixels, expected 8x8"),
]


@pytest.mark.parametrize("name,damage,fragment", BROKEN_FILES,
                         ids=[f"{n}-{d.__name__}" for n, d, _ in BROKEN_FILES])
def test_broken_image(capsys, tmp_path, name, damage, fragment):
    data = tmp_path / "data"
    write_folder(data)
    damage(data / name)
    status, err = inproc(capsys, tmp_path / "work", *FOLDER, f"--config.dataset.root={data}")
    assert_one_error(status, err, f"broken image {data / name}")
    assert fragment in err and "skip_broken=True" in err
    assert not (tmp_path / "work" / "results.json").exists()
    if name.startswith("test"):     # found before training started
        assert_nothing_written(tmp_path / "work")


@pytest.mark.parametrize("name,damage", [("train/b/003.jpg", empty), ("test/a/004.jpg", text),
                                         ("test/b/002.jpg", truncate)])
def test_broken_image_skipped_and_listed(capsys, tmp_path, name, damage):
    data = tmp_path / "data"
    write_folder(data)
    damage(data / name)
    status, err = inproc(capsys, tmp_path / "work", *FOLDER, f"--config.dataset.root={data}",
                         "--config.dataset.skip_broken=True")
    assert status == 0, err[-2000:]
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert list(results["skipped_images"]) == [str(data / name)]
    assert results["num_test_images"] == (9 if name.startswith("test") else 10)


# --- a trained workdir: checkpoints, recipes, locks, signals ---------------------------------

@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
    """This module's copy of the shared tiny run (tests/conftest.py)."""
    return tiny_run_copy(tiny_run, tmp_path_factory, "trained")


def copy_of(trained, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(trained, work)
    return work


def _latest(workdir):
    return max(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def _data_files(directory):
    """The array data chunks under ``directory`` (orbax keeps them in folders
    named ``d``)."""
    files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names
             if os.path.basename(d) == "d"]
    assert files
    return files


def _truncate_data(step_dir):
    for path in _data_files(step_dir / "state"):
        truncate(path)


def _empty_step_dir(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _replace_by_file(step_dir):
    shutil.rmtree(step_dir.parent)
    step_dir.parent.write_text("not checkpoints")


CHECKPOINT_FAULTS = [
    ("state-data-truncated", _truncate_data, "eval", "is corrupted or truncated"),
    ("model-metadata-truncated", lambda d: truncate(d / "model" / "metadata"), "eval",
     "is corrupted or truncated"),
    ("recipe-metadata-truncated", lambda d: truncate(d / "recipe" / "metadata"), "train_eval",
     "is corrupted or truncated"),
    ("step-dir-emptied", _empty_step_dir, "eval", "is corrupted or truncated"),
    ("checkpoints-is-a-file", _replace_by_file, "train_eval", "checkpoints is not a directory"),
]


@pytest.mark.parametrize("damage,mode,fragment", [f[1:] for f in CHECKPOINT_FAULTS],
                         ids=[f[0] for f in CHECKPOINT_FAULTS])
def test_corrupted_checkpoint(trained, tmp_path, damage, mode, fragment):
    work = copy_of(trained, tmp_path)
    step_dir = work / "checkpoints" / str(_latest(work))
    damage(step_dir)
    before = (work / "results.json").read_bytes()
    status, err = subproc(work, f"--config.mode={mode}")
    assert_one_error(status, err, fragment)
    if "corrupted" in fragment:
        assert f"checkpoint {step_dir} is corrupted" in err and "delete that directory" in err
    assert "Event loop is closed" not in err and "absl" not in err
    assert (work / "results.json").read_bytes() == before


def test_changed_recipe_is_refused(capsys, trained, tmp_path):
    work = copy_of(trained, tmp_path)
    before = (work / "results.json").read_bytes()
    status, err = inproc(capsys, work, "--config.optim.batch_size=16", "--config.seed=7")
    assert_one_error(status, err, "used another recipe (optim.batch_size: checkpoint 32 vs "
                                  "config 16; seed: checkpoint 42 vs config 7)")
    assert (work / "results.json").read_bytes() == before


def test_checkpoint_holds_the_whole_config_and_a_resume_may_change_only_eval_fields(
        capsys, trained, tmp_path):
    """Every field is stored; a field outside EVAL_ONLY_FIELDS (here one the
    old hand-kept recipe list did not name) is refused on resume, eval-only
    fields pass."""
    import json

    from train import checkpoints

    work = copy_of(trained, tmp_path)
    step_dir = work / "checkpoints" / str(_latest(work))
    saved = json.loads(next((step_dir / "config").glob("*")).read_text())
    assert saved["optim.momentum"] == 0.9 and saved["snn.presim"] is not None
    assert set(checkpoints.recipe_fields_of(saved)) == set(saved) - {
        k for k in saved if checkpoints.eval_only(k)}
    status, err = inproc(capsys, work, "--config.dataset.cutout=3")
    assert_one_error(status, err, "used another recipe (dataset.cutout: checkpoint")
    status, err = inproc(capsys, work, "--config.mode=eval", "--config.log_every_steps=7",
                         "--config.data_threads=1", "--config.snn.time_steps=(1,2)")
    assert status == 0, err


def test_changed_augmentation_is_refused(capsys, trained, tmp_path):
    work = copy_of(trained, tmp_path)
    status, err = inproc(capsys, work, "--config.dataset.mean=(0.4,0.5,0.5)")
    assert_one_error(status, err, "dataset.mean: checkpoint [0.5, 0.5, 0.5] vs config [0.4, 0.5, 0.5]")


def test_eval_only_settings_may_change(capsys, trained, tmp_path):
    """The documented allowance: a finished run re-evaluates with other
    evaluation settings and the checkpoint's recipe is not in the way."""
    work = copy_of(trained, tmp_path)
    status, err = inproc(capsys, work, "--config.snn.time_steps=(1,2)",
                         "--config.snn.eval_batch_size=60")
    assert status == 0, err[-2000:]
    assert json.loads((work / "results.json").read_text())["time_steps"] == [1, 2]


def test_import_of_a_broken_pytorch_file(capsys, tmp_path):
    path = tmp_path / "model.pth"
    path.write_text("not a torch file")
    status, err = inproc(capsys, tmp_path / "work", "--config.mode=eval",
                         f"--config.init_from={path}", "--config.model.arch=resnet20")
    assert_one_error(status, err, f"cannot import {path}")


def test_second_run_on_a_busy_workdir(trained, tmp_path):
    """A run holding the lock in another process: the second run names it."""
    work = copy_of(trained, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from train import workdir as w\n"
         "with w.Lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)", str(work)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (work / "results.json").read_bytes()
        status, err = subproc(work, "--config.mode=eval")
        assert_one_error(status, err, f"is in use by pid {holder.pid} on ")
        assert (work / "results.json").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its lock file is stale and is taken over.
    assert f"pid {holder.pid}" in (work / workdirs.LOCK_NAME).read_text()
    status, err = subproc(work, "--config.mode=eval")
    assert status == 0, err[-2000:]
    assert f"pid {holder.pid}" not in (work / workdirs.LOCK_NAME).read_text()


def _interrupt(workdir, signum):
    """Starts a tiny run, sends ``signum`` once training has logged its first
    row, returns (status, stderr)."""
    cmd = [sys.executable, "-m", "train.main", TINY, f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (
            metrics.exists() and metrics.stat().st_size):
        time.sleep(0.02)
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert time.time() - sent < 30, "did not stop within seconds"
    return proc.returncode, err


def test_sigterm_checkpoints_and_resumes_exactly(trained, tmp_path):
    import jax

    status, err = _interrupt(tmp_path, signal.SIGTERM)
    assert_one_error(status, err, "SIGTERM at step ", code=143)
    stopped = int(err.split("SIGTERM at step ")[1].split()[0])
    assert 10 <= stopped < 88 and _latest(tmp_path) == stopped
    assert "checkpoint saved; rerun the same command to resume" in err
    assert not (tmp_path / "results.json").exists()
    resumed = subproc(tmp_path)
    assert resumed[0] == 0, resumed[1][-3000:]
    step_a, full = latest_checkpoint(trained)
    step_b, again = latest_checkpoint(tmp_path)
    assert step_a == step_b == 88
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ours = json.loads((tmp_path / "results.json").read_text())
    theirs = json.loads((trained / "results.json").read_text())
    assert ours["ann_accuracy"] == theirs["ann_accuracy"]
    assert ours["snn_accuracy"] == theirs["snn_accuracy"]


def test_sigint_checkpoints_with_status_130(tmp_path):
    status, err = _interrupt(tmp_path, signal.SIGINT)
    assert_one_error(status, err, "SIGINT at step ", code=130)
    stopped = int(err.split("SIGINT at step ")[1].split()[0])
    assert _latest(tmp_path) == stopped
    assert not (tmp_path / "results.json").exists()
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if "tmp" in f]


AGREE = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
from train.preemption import StopSignals
stop = StopSignals()
seen = []
for step in range(3):
    if jax.process_index() == 1 and step == 1:
        stop.signum = 15            # SIGTERM reached process 1 only, during step 1
    seen.append(stop.requested())
print(seen, flush=True)
"""


def test_two_processes_agree_on_the_stop_step():
    """Multi-host preemption: a signal seen by one process stops every process
    at the same step (two CPU processes, jax.distributed, gloo collectives)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", AGREE, str(i), str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "[0, 15, 15]"


# --- image folders, divergence, a checkpoint of another model ------------------------------

def test_batch_not_dividing_devices(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    status, err = subproc(tmp_path, "--config.optim.batch_size=12", env=env)
    assert_one_error(status, err, "optim.batch_size=12 does not divide over the 8 devices")


def _folder(root, layout):
    from PIL import Image

    for split, classes in layout.items():
        for c, n in classes.items():
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / c / f"{i}.png")


def test_image_folder_without_images(capsys, tmp_path):
    _folder(tmp_path / "data", {"train": {"a": 2, "b": 0}, "test": {"a": 1, "b": 1}})
    status, err = inproc(capsys, tmp_path / "w", "--config.dataset.name=image_folder",
                         f"--config.dataset.root={tmp_path / 'data'}")
    assert_one_error(status, err, "holds no images")


def test_image_folder_inconsistent_classes(capsys, tmp_path):
    _folder(tmp_path / "data", {"train": {"a": 2, "b": 2}, "test": {"a": 1, "c": 1}})
    status, err = inproc(capsys, tmp_path / "w", "--config.dataset.name=image_folder",
                         f"--config.dataset.root={tmp_path / 'data'}")
    assert_one_error(status, err,
                     "train and test classes differ (only in train: ['b'], only in test: ['c'])")


def test_missing_image_folder(capsys, tmp_path):
    status, err = inproc(capsys, tmp_path / "w", "--config.dataset.name=image_folder",
                         f"--config.dataset.root={tmp_path / 'nothing'}")
    assert_one_error(status, err, "does not exist")


def test_diverging_loss_stops_without_saving(tmp_path):
    status, err = subproc(tmp_path, "--config.optim.lr=1e30", "--config.log_every_steps=1")
    assert_one_error(status, err, "training diverged")
    assert not os.path.isdir(tmp_path / "checkpoints") or not [
        d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_eval_of_another_architecture_checkpoint_refused(trained, tmp_path):
    work = copy_of(trained, tmp_path)
    status, err = subproc(work, "--config.mode=eval", "--config.model.arch=tests.helpers:tiny_vgg")
    assert_one_error(status, err, "holds another model (arch: checkpoint 'tests.helpers:tiny_resnet' "
                                  "vs config 'tests.helpers:tiny_vgg')")


# --- round three: damaged bytes, storage faults, repeated overrides, config-file typos ---------

def _rewrite_state(step_dir, change):
    """Rewrites the state saved in ``step_dir`` with ``change(state)``, through
    orbax, leaving the digest saved with it as it was: bytes that changed
    after the save, which still decode."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    state = checkpointer.restore(step_dir / "state")
    shutil.rmtree(step_dir / "state")
    checkpointer.save(step_dir / "state", change(state))
    checkpointer.wait_until_finished()


def _nudge_first_kernel(state):
    """``state`` with 1e-3 added to its first kernel."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    first = next(i for i, (p, _) in enumerate(leaves) if "kernel" in jax.tree_util.keystr(p))
    flat = [leaf + 1e-3 if i == first else leaf for i, (_, leaf) in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), flat)


@pytest.mark.parametrize("mode", ["eval", "train_eval"])
def test_changed_checkpoint_bytes_are_refused_by_the_digest(capsys, trained, tmp_path, mode):
    """A checkpoint whose state changed after the save (the bytes still
    decode) is refused in one line naming it, when evaluated and when resumed
    (an earlier checkpoint, so that training would go on from it)."""
    work = copy_of(trained, tmp_path)
    steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
    if mode == "train_eval":      # resume from the one before the last
        shutil.rmtree(work / "checkpoints" / str(steps[-1]))
        steps.pop()
    step_dir = work / "checkpoints" / str(steps[-1])
    _rewrite_state(step_dir, _nudge_first_kernel)
    before = (work / "results.json").read_bytes()
    status, err = inproc(capsys, work, f"--config.mode={mode}")
    assert_one_error(status, err, f"checkpoint {step_dir} does not match the digest saved with it")
    assert (work / "results.json").read_bytes() == before
    assert steps[-1] == _latest(work)     # nothing trained on from it


def _restored_leaves(state_dir):
    """Every array of the orbax state at ``state_dir``, as numpy arrays."""
    import jax
    import orbax.checkpoint as ocp

    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(
        ocp.PyTreeCheckpointer().restore(str(state_dir)))]


def _overwrite(path, offset, data=bytes(range(100, 148))):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _damage_that_changes_values(state_dir, scratch):
    """(data file relative to ``state_dir``, offset) where 48 overwritten
    bytes still decode but change an array's values. orbax's layout differs
    from run to run (its data files also hold index nodes and bytes no longer
    referenced), so a fixed offset may hit nothing that is read: each
    candidate is tried on a scratch copy and restored here."""
    original = _restored_leaves(state_dir)
    files = sorted(_data_files(state_dir), key=os.path.getsize, reverse=True)
    for number, path in enumerate(files):
        size = os.path.getsize(path)
        for fraction in (0.5, 0.25, 0.75, 0.1, 0.9):
            offset = min(int(size * fraction), size - 48)
            copy = scratch / f"{number}-{fraction}"
            shutil.copytree(state_dir, copy)
            relative = os.path.relpath(path, state_dir)
            _overwrite(copy / relative, offset)
            try:
                damaged = _restored_leaves(copy)
            except Exception:
                continue
            if any(not np.array_equal(a, b) for a, b in zip(original, damaged)):
                return relative, offset
    raise AssertionError(f"no 48-byte overwrite of {files} changes a value")


def test_overwritten_bytes_in_a_checkpoint_data_file_are_refused(trained, tmp_path):
    """48 bytes overwritten inside a data file of the final checkpoint, at a
    place shown to change an array's values while still decoding: refused by
    the digest in one line naming the checkpoint, never evaluated."""
    work = copy_of(trained, tmp_path)
    step_dir = work / "checkpoints" / str(_latest(work))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    relative, offset = _damage_that_changes_values(step_dir / "state", scratch)
    _overwrite(step_dir / "state" / relative, offset)
    before = (work / "results.json").read_bytes()
    status, err = subproc(work, "--config.mode=eval")
    assert_one_error(status, err, f"checkpoint {step_dir} ")
    assert "does not match the digest" in err
    assert (work / "results.json").read_bytes() == before


def test_the_digest_covers_every_byte_dtype_and_shape():
    import jax.numpy as jnp

    from train import checkpoints

    state = {"a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": jnp.zeros((), jnp.int32)}
    reference = checkpoints.digest(state)
    assert reference == checkpoints.digest({k: np.asarray(v) for k, v in state.items()})
    assert len(reference) == 64
    changed = [{**state, "a": state["a"].at[1, 2].set(5.0000005)},
               {**state, "a": state["a"].reshape(3, 2)},
               {**state, "b": jnp.zeros((), jnp.uint32)},
               {**state, "b": jnp.ones((), jnp.int32)}]
    assert len({reference, *(checkpoints.digest(s) for s in changed)}) == 5


def _enospc(*args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed to "
                     "write 15317 bytes to file 14: No space left on device [os_error_code='28']")


def test_disk_full_at_the_first_checkpoint_is_one_line(capsys, tmp_path, monkeypatch):
    """orbax's save failing as it does on a full disk (its tensorstore error):
    one line, exit 2, saying that no checkpoint was saved, no temporary
    directory left."""
    import orbax.checkpoint as ocp

    def save(self, step, *args, **kwargs):
        os.makedirs(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp"))
        _enospc()

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    status, err = inproc(capsys, tmp_path)
    assert_one_error(status, err, f"cannot save the checkpoint of step 20 in "
                                  f"{tmp_path / 'checkpoints'}: No space left on device; no "
                                  f"checkpoint had been saved yet; make room")
    assert os.listdir(tmp_path / "checkpoints") == []


def test_a_read_only_checkpoints_directory_mid_training_is_one_line(capsys, tmp_path, monkeypatch):
    """The second save fails with EROFS: one line naming the checkpoint kept."""
    import errno

    import orbax.checkpoint as ocp

    original, calls = ocp.CheckpointManager.save, []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.directory))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    status, err = inproc(capsys, tmp_path)
    assert_one_error(status, err, f"cannot save the checkpoint of step 40 in "
                                  f"{tmp_path / 'checkpoints'}: Read-only file system; the "
                                  f"checkpoint of step 20 in {tmp_path / 'checkpoints'} is kept")
    assert _latest(tmp_path) == 20


def test_disk_full_while_results_are_written_is_one_line(capsys, trained, tmp_path, monkeypatch):
    import errno

    from train.evaluation import report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    work = copy_of(trained, tmp_path)
    before = (work / "results.json").read_bytes()
    monkeypatch.setattr(report, "write_results", full)
    status, err = inproc(capsys, work)
    assert_one_error(status, err, f"cannot write the results in {work}: No space left on device; "
                                  f"the checkpoint of step 88 is kept; no results file is "
                                  f"half-written")
    assert (work / "results.json").read_bytes() == before


def test_a_failed_metrics_write_is_one_line(capsys, tmp_path, monkeypatch):
    import errno

    from train import metric_writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metric_writer, "open", full, raising=False)
    status, err = inproc(capsys, tmp_path)
    assert_one_error(status, err, f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on "
                                  f"device; the checkpoints saved so far are kept")


REAL_DISK_FULL = """
set -e
mount -t tmpfs -o size=48k tmpfs "$1"
exec "$2" -m train.main --config=tests/configs/tiny.py --workdir="$1/w"
"""


def test_a_real_full_disk_at_the_first_checkpoint(tmp_path):
    """The real thing where user namespaces allow it: a 48 KiB tmpfs fills
    at the first checkpoint save (tensorstore's writes fail)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-r", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -r -m (user and mount namespaces) to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", REAL_DISK_FULL, "sh", str(mount),
                           sys.executable], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert_one_error(proc.returncode, proc.stderr, "cannot save the checkpoint of step 20 in ")
    assert "No space left on device; no checkpoint had been saved yet" in proc.stderr


@pytest.mark.parametrize("args,expected", [
    (["--config.snn.time_steps=(1,2)", "--config.snn.time_steps=(4,)"], {"snn.time_steps": (4,)}),
    (["--config.dataset.mean=(0.1,0.2,0.3)", "--config.dataset.mean=(0.4,0.5,0.6)"],
     {"dataset.mean": (0.4, 0.5, 0.6)}),
    (["--config.seed=3", "--config.seed", "5"], {"seed": 5}),
    (["--config.snn.time_steps", "(1,2)", "--config.snn.time_steps=(8,)", "--config.seed=1"],
     {"snn.time_steps": (8,), "seed": 1}),
])
def test_the_last_of_repeated_overrides_wins(args, expected):
    argv = ["train.main", TINY, "--workdir=unused", *args]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        config = cli_main.parse(argv)[0]
    finally:
        os.chdir(cwd)
    for field, value in expected.items():
        node = config
        for part in field.split("."):
            node = node[part]
        assert tuple(node) == value if isinstance(value, tuple) else node == value


def test_an_unknown_field_set_in_a_config_file_is_refused(capsys, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("from tests.configs import tiny\n\n\ndef get_config():\n"
                    "    config = tiny.get_config()\n    config.optim.lr_warmup = 5\n"
                    "    return config\n")
    status, err = inproc(capsys, tmp_path / "work", config=f"--config={path}")
    assert_one_error(status, err, "unknown config field 'optim.lr_warmup'; did you mean ")
    assert_nothing_written(tmp_path / "work")


@pytest.mark.parametrize("body,kind", [("    return None\n", "NoneType"),
                                       ("    return {'seed': 1}\n", "dict")])
def test_a_config_file_returning_no_config_is_one_line(capsys, tmp_path, body, kind):
    path = tmp_path / "none.py"
    path.write_text("def get_config():\n" + body)
    status, err = inproc(capsys, tmp_path / "work", config=f"--config={path}")
    assert_one_error(status, err, f"config file '{path}': get_config() returned {kind}; it must "
                                  f"return the ml_collections.ConfigDict")


@pytest.mark.parametrize("item,message", [
    ("dataset.autoaugment=nope", "expected True or False, got 'nope'"),
    ("snn.nope=1", "unknown config field 'snn.nope'; did you mean 'snn.presim'?"),
    ("nope=1", "unknown config field 'nope'"),
    ("snn.time_steps=5", "expected a tuple such as (5,), got '5'"),
    ("snn.time_steps=nope", "expected a tuple such as (1, 2), got 'nope'"),
    ("seed=abc", "expected a value of type int, got 'abc'"),
])
def test_set_says_what_it_expects(capsys, item, message):
    from benchmarks import cli
    from configs import quickstart

    with pytest.raises(SystemExit) as done:
        cli.set_fields(quickstart.get_config(), [item])
    assert done.value.code == 2
    assert capsys.readouterr().err == f"error: --set {item!r}: {message}\n"


@pytest.mark.parametrize("arg,message", [("--examples=-1", "argument --examples: must be an int "
                                                           ">= 0, got '-1'"),
                                         ("--batch=0", "argument --batch: must be an int >= 1, "
                                                       "got '0'")])
def test_methods_compared_refuses_bad_counts(capsys, arg, message):
    from benchmarks import methods_compared

    with pytest.raises(SystemExit) as done:
        methods_compared.main(["--config=configs/quickstart.py", "--workdir=unused", arg])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


@pytest.mark.parametrize("name", ["methods_compared", "precision_emulation"])
def test_benchmarks_of_a_trained_run_refuse_a_workdir_without_one(capsys, tmp_path, name):
    import importlib

    benchmark = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as done:
        benchmark.main(["--config=configs/quickstart.py", f"--workdir={tmp_path / 'none'}"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "checkpoint" in err[0], err


def test_a_divergence_message_names_the_checkpoint_kept(tmp_path):
    from train.training_loop import diverged

    assert str(diverged("loss is nan at step 30", str(tmp_path))) == (
        "loss is nan at step 30: training diverged; no checkpoint was saved before it "
        "(lower config.optim.lr?)")
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    (tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp").mkdir()
    assert f"the checkpoint of step 20 in {tmp_path / 'checkpoints'} is kept (lower" in (
        str(diverged("loss is nan at step 30", str(tmp_path))))


SECOND_SIGTERM = """
import os, signal, sys, time
import orbax.checkpoint as ocp
from train import main
finalize = ocp.CheckpointManager._finalize
def slow_finalize(self, step, steps_to_remove):
    if step == 20:      # the first save: two SIGTERMs while the main thread waits for it
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    return finalize(self, step, steps_to_remove)
ocp.CheckpointManager._finalize = slow_finalize
main._exit(main.main(sys.argv[1:]))
"""


def test_a_second_sigterm_during_a_checkpoint_save_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGTERM, "train.main", TINY,
                           f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert_one_error(proc.returncode, proc.stderr, "interrupted: SIGTERM", code=143)
    assert "ERROR" not in proc.stderr


def _saved_small_state(tmp_path):
    """A checkpoint of a small state saved by ``train.checkpoints.save``:
    ``(manager, state, description, step directory)``."""
    import jax.numpy as jnp

    from train import checkpoints

    state = {"kernel": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64) / 7,
             "step": jnp.asarray(20, jnp.int32)}
    description = {"model": {"arch": "x"}, "recipe": {}, "config": {}}
    mngr = checkpoints.manager(str(tmp_path), keep=3)
    checkpoints.save(mngr, 20, state, description)
    return mngr, state, description, tmp_path / "checkpoints" / "20"


def test_restore_checks_the_digest_saved_with_the_state(tmp_path):
    """The unit under the pipeline tests above, fast: an intact checkpoint
    restores; one whose state was rewritten after the save is refused."""
    import jax

    from train import checkpoints
    from train.errors import CheckpointError

    mngr, state, description, step_dir = _saved_small_state(tmp_path)
    assert (step_dir / "digest").is_dir()
    step, restored = checkpoints.restore(mngr, state, description)
    assert step == 20 and checkpoints.digest(restored) == checkpoints.digest(state)
    mngr.close()
    _rewrite_state(step_dir, lambda s: jax.tree_util.tree_map(
        lambda a: a + 1e-3 if a.dtype == np.float32 else a, s))
    mngr = checkpoints.manager(str(tmp_path), keep=3)
    with pytest.raises(CheckpointError, match=f"^checkpoint {step_dir} does not match the digest "
                                              f"saved with it"):
        checkpoints.restore(mngr, state, description)
    mngr.close()


def test_restore_refuses_48_overwritten_bytes(tmp_path):
    from train import checkpoints
    from train.errors import CheckpointError

    mngr, state, description, step_dir = _saved_small_state(tmp_path)
    mngr.close()
    largest = max(_data_files(step_dir / "state"), key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.seek(os.path.getsize(largest) // 2)
        f.write(bytes(range(100, 148)))
    mngr = checkpoints.manager(str(tmp_path), keep=3)
    with pytest.raises(CheckpointError, match=f"^checkpoint {step_dir} (does not match the digest|"
                                              f"is corrupted or truncated)"):
        checkpoints.restore(mngr, state, description)
    mngr.close()
