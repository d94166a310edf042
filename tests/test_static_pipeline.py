"""Static calibration as a pipeline method (``config.snn.static``): the
method ``static`` in results.json, the saved potentials and their replay."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from cosjax import correct_per_step
from cosjax import static_calibration as sc
from tests.configs import tiny
from tests.helpers import latest_checkpoint
from train import checkpoints, job
from train.data.sources import load_splits
from train.evaluation import static_potentials
from train.sharding import make_mesh

NUM_TEST = 40


def static_config():
    config = tiny.get_config()
    config.optim.epochs = 1
    config.snn.max_eval_examples = NUM_TEST
    config.snn.presim = 0                  # no COS settings: plain and static only (fast)
    config.snn.static.enabled = True
    config.snn.static.window = 2
    config.snn.static.granularity = "neuron"
    config.snn.static.calib_size = 64
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, results)`` of one train_eval run of :func:`static_config`;
    tests work on copies (:func:`copy_of`)."""
    workdir = tmp_path_factory.mktemp("static")
    return workdir, job.run(static_config(), str(workdir))


def copy_of(trained, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(trained[0], work)
    return work


def test_static_method_results_saved_potentials_replay_and_analysis(trained, tmp_path, capsys):
    config = static_config()
    tmp_path = copy_of(trained, tmp_path)
    results = trained[1]

    # results.json: the method at every T, its settings and label.
    saved = json.load(open(tmp_path / "results.json"))
    assert set(saved["snn_accuracy"]) == {"plain", "static"}
    assert len(saved["snn_accuracy"]["static"]) == 4
    settings = saved["settings"]["static"]
    assert {k: settings[k] for k in ("presim", "iterations", "window", "calib_images",
                                     "estimator", "granularity")} == {
        "presim": 0, "iterations": 1, "window": 2, "calib_images": 64, "estimator": "grid",
        "granularity": "neuron"}
    assert settings["calib_seconds"] > 0
    assert settings["potentials"] == "calibrated"
    assert settings["potentials_file"] == str(trained[0] / static_potentials.FILENAME)
    assert saved["methods"]["static"].startswith("static v0")
    # Latency table: static sits at its own T (no pre-simulation).
    at = saved["latency"]["accuracy"]["static"]
    assert at == [saved["snn_accuracy"]["static"][t - 1] for t in saved["latency"]["total"]]
    assert saved["methods"]["static"] in (tmp_path / "results.md").read_text()

    # The saved potentials: one per neuron of every spiking layer, with their info.
    potentials, info = sc.load_potentials(str(tmp_path / static_potentials.FILENAME))
    mode = os.stat(tmp_path / static_potentials.FILENAME).st_mode & 0o777      # not mkstemp's 0600
    assert mode == os.stat(tmp_path / "results.json").st_mode & 0o777
    assert info["window"] == 2 and info["calib_images"] == 64 and info["seed"] == config.seed
    step, _ = latest_checkpoint(tmp_path)
    assert info["checkpoint_step"] == settings["checkpoint_step"] == step > 0
    assert {k: info[k] for k in static_potentials.MATCHED} == static_potentials.wanted(config, step)
    splits = load_splits(config)
    model = job.architectures.from_config(config, splits.num_classes)
    config.mode = "eval"
    variables = job.load_for_eval(config, str(tmp_path), model, splits, make_mesh())
    source = job.test_source(config, splits)
    images = static_potentials.calibration_images(config, [source[i] for i in range(NUM_TEST)])
    labels = np.asarray([source[i]["label"] for i in range(NUM_TEST)])
    shapes = sc.neuron_shapes(model, variables, images.shape[1:])
    assert list(potentials) == list(shapes)
    assert all(potentials[k].shape == shapes[k] for k in shapes)

    # Replaying the file gives the pipeline's correct counts, exactly.
    outputs = sc.simulate_static(model, variables, images, potentials, time_steps=4)
    correct = np.asarray(jax.device_get(correct_per_step(outputs, labels, np.ones(NUM_TEST, bool))))
    pipeline = np.rint(np.asarray(results["snn_accuracy"]["static"]) * NUM_TEST).astype(int)
    np.testing.assert_array_equal(correct, pipeline)

    # Analysis mode includes the method, at its own latency, with the same counts
    # (and the potentials of the train_eval run: same settings, same checkpoint).
    config.mode = "analyze"
    capsys.readouterr()
    job.run(config, str(tmp_path))
    assert (f"static potentials: reusing {tmp_path / static_potentials.FILENAME}"
            in capsys.readouterr().out)
    analysis = json.load(open(tmp_path / "analysis.json"))
    assert set(analysis["settings"]) == {"plain", "static"}
    settings = analysis["settings"]["static"]
    assert settings["presim"] == 0 and settings["samples"] == NUM_TEST
    assert settings["calibration"]["window"] == 2 and settings["calibration"]["calib_images"] == 64
    assert settings["calibration"]["potentials"] == "reused"
    assert analysis["latency"]["static"]["cos"]["latency"] == [1, 2, 3, 4]
    np.testing.assert_array_equal(np.rint(np.asarray(settings["accuracy"]) * NUM_TEST), pipeline)
    assert analysis["methods"]["static"] in (tmp_path / "analysis.md").read_text()


def test_potentials_are_reused_recalibrated_on_a_change_or_given(trained, tmp_path, capsys,
                                                                  monkeypatch):
    work = copy_of(trained, tmp_path)
    first = trained[1]
    path = work / static_potentials.FILENAME
    calls = []
    original = sc.calibrate_static

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sc, "calibrate_static", spy)
    config = static_config()
    config.mode = "eval"
    capsys.readouterr()

    # Same settings, same checkpoint: the saved potentials, no calibration,
    # the same accuracies (the same program on the same data).
    results = job.run(config, str(work))
    assert calls == []
    assert f"static potentials: reusing {path} (calibrated for the same settings" in \
        capsys.readouterr().out
    assert results["snn_accuracy"]["static"] == first["snn_accuracy"]["static"]
    settings = json.load(open(work / "results.json"))["settings"]["static"]
    assert settings["potentials"] == "reused" and settings["potentials_file"] == str(path)
    assert settings["calib_seconds"] == first["settings"]["static"]["calib_seconds"]
    original_file = tmp_path / "original.npz"
    shutil.copy(path, original_file)

    # Another calibration set size and potentials of another checkpoint step:
    # calibrated again, the reasons printed, the file replaced.
    potentials, info = sc.load_potentials(str(path))
    step = info["checkpoint_step"]
    sc.save_potentials(str(path), potentials, info={**info, "checkpoint_step": step - 1})
    config.snn.static.calib_size = 32
    results = job.run(config, str(work))
    assert len(calls) == 1
    assert (f"static potentials: calibrating (the saved file was calibrated with calib_size 64 "
            f"-> 32, checkpoint_step {step - 1} -> {step})") in capsys.readouterr().out
    assert results["settings"]["static"]["potentials"] == "calibrated"
    assert results["settings"]["static"]["calib_images"] == 32
    assert sc.load_potentials(str(path))[1]["calib_size"] == 32

    # Given potentials (snn.static.potentials): evaluated as they are, never
    # calibrated, whatever the settings; the workdir's file is left alone.
    before = path.read_bytes()
    config.snn.static.potentials = str(original_file)
    config.snn.static.window = 3
    results = job.run(config, str(work))
    assert len(calls) == 1
    assert (f"static potentials: loaded {original_file} (snn.static.potentials; not calibrated)"
            in capsys.readouterr().out)
    assert results["snn_accuracy"]["static"] == first["snn_accuracy"]["static"]
    settings = results["settings"]["static"]
    assert settings["potentials"] == "loaded" and settings["window"] == 2
    assert results["methods"]["static"] == first["methods"]["static"]
    assert path.read_bytes() == before


def test_static_settings_are_not_part_of_the_recipe():
    config = static_config()
    before = checkpoints.recipe(config, 100)
    config.snn.static.window = 8
    config.snn.static.estimator = "mean_cos"
    config.snn.static.calib_size = 10
    assert checkpoints.recipe(config, 100) == before
    assert not any(field.startswith("snn") for field in before)



def test_eval_step_and_analysis_apply_static_potentials_like_simulate_static():
    from cosjax import analysis
    from tests.helpers import random_variables, tiny_resnet
    from train.evaluation import eval_steps

    model = tiny_resnet()
    variables = random_variables(model, (8, 8, 3))
    images = np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32)
    shapes = sc.neuron_shapes(model, variables, images.shape[1:])
    rng = np.random.default_rng(1)
    potentials = {k: rng.uniform(0.0, 1.0, s[-1:]).astype(np.float32) for k, s in shapes.items()}
    outputs = sc.simulate_static(model, variables, images, potentials, time_steps=4)
    # Labels: simulate_static's answers at T = 4, which plain conversion (v0 = 1/2)
    # does not all give, so a step that ignores the potentials fails below.
    labels = np.asarray(outputs).cumsum(axis=0)[-1].argmax(-1)
    mask = np.arange(16) < 12                             # 4 padding rows
    replay = np.asarray(correct_per_step(outputs, labels, mask))
    assert replay[-1] == 12

    shardings = make_mesh()
    step = eval_steps.make_static_eval_step(model, 4, shardings.data, shardings.replicated)
    correct, count = jax.device_get(step(variables, sc.expand_potentials(potentials, shapes),
                                         images, labels, mask))
    assert int(count) == 12
    np.testing.assert_array_equal(np.asarray(correct), replay)

    stats = analysis.analyze_batch(model, variables, images, time_steps=4, window=4, labels=labels,
                                   mask=mask, initial_potentials=sc.batch_potentials(
                                       potentials, shapes, 16))
    np.testing.assert_array_equal(stats["correct"], replay)
