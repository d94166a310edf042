"""End-to-end tests of the training pipeline on tiny models and tiny data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cosjax.models import ARCHITECTURES
from tests.configs.tiny import TINY_RESNET
from tests.helpers import set_fields, tiny_resnet

RESULT_KEYS = {"dataset", "arch", "levels", "presim", "iterations", "time_steps", "ann_accuracy",
               "snn_accuracy", "settings", "methods", "num_test_images", "wall_time_s", "latency",
               "eval_seconds", "num_devices", "num_processes"}


def tiny_config(name="quickstart", **overrides):
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.arch = TINY_RESNET
    config.optim.epochs = 1
    config.optim.batch_size = 16
    config.snn.time_steps = (1, 2, 4)
    config.snn.presim = 2
    config.snn.iterations = (1, 2)
    config.snn.eval_batch_size = 32
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.data_threads = 2
    set_fields(config, overrides)
    return config


def check_results(workdir, expected_images):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert set(results) >= RESULT_KEYS
    assert results["num_test_images"] == expected_images
    assert set(results["snn_accuracy"]) == {"plain", "cos_rho2_k1", "cos_rho2_k2"}
    for curve in results["snn_accuracy"].values():
        assert len(curve) == 4 and all(0 <= a <= 1 for a in curve)
    assert os.path.getsize(os.path.join(workdir, "accuracy_vs_T.png")) > 1000
    assert "| plain conversion |" in open(os.path.join(workdir, "results.md")).read()
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    assert lines and "train_loss" in json.loads(lines[0])
    return results


def test_quickstart_digits_end_to_end_and_eval_only(tmp_path):
    from train.job import run

    config = tiny_config()
    results = run(config, str(tmp_path))
    check_results(tmp_path, 360)
    assert os.listdir(tmp_path / "checkpoints")
    config.unlock() if hasattr(config, "unlock") else None
    config.mode = "eval"
    again = run(config, str(tmp_path))
    assert again["ann_accuracy"] == results["ann_accuracy"]
    assert again["snn_accuracy"] == results["snn_accuracy"]


def test_tfds_cifar_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    from train.job import run

    config = tiny_config("cifar10")
    config.optim.epochs = 2
    config.dataset.autoaugment = True
    with tfds.testing.mock_data(num_examples=40):
        run(config, str(tmp_path))
    check_results(tmp_path, 40)


def _write_image_folder(root, classes=("cat", "dog", "eel"), per_class=(6, 3), size=16, skip=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c in classes:
            if skip == (split, c):
                continue
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folder_end_to_end(tmp_path):
    from train.job import run

    data = tmp_path / "data"
    _write_image_folder(data)
    config = tiny_config("cifar10", **{"dataset.name": "image_folder", "dataset.root": str(data),
                                       "dataset.cutout": 4, "dataset.image_size": 16})
    run(config, str(tmp_path / "work"))
    results = check_results(tmp_path / "work", 9)
    assert results["dataset"] == "image_folder"


@pytest.mark.parametrize("batch", [1, 5, 8, 37, 64])
def test_eval_batches_count_every_image_once(batch):
    from train.data import batching
    from train.data.sources import ArraySource

    n = 37
    source = ArraySource(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n))
    config = tiny_config()
    num_batches, it = batching.eval_batches(source, config, batch)
    seen = []
    for b in it:
        assert b["image"].shape == (batch, 4, 4, 3)
        seen.extend(b["label"][b["mask"]].tolist())
    assert num_batches == -(-n // batch)
    assert sorted(seen) == list(range(n))


def test_max_eval_examples_draws_a_seeded_subset_of_every_class():
    from train.data.sources import ArraySource, Splits
    from train.job import test_source

    # Example i has label i; "class" i // 50: 10 classes stored class by
    # class, as an image folder lists them.
    source = ArraySource(np.zeros((500, 1, 1, 3), np.uint8), np.arange(500))
    splits = Splits(train=source, test=source, num_classes=500)
    config = tiny_config()

    def picked():
        subset = test_source(config, splits)
        return [subset[i]["label"] for i in range(len(subset))]

    config.snn.max_eval_examples = 100
    first = picked()
    assert len(first) == 100 and len(set(first)) == 100 and first == sorted(first)
    assert {i // 50 for i in first} == set(range(10))
    assert picked() == first                       # seeded
    config.seed += 1
    assert picked() != first
    config.snn.max_eval_examples = 0
    assert test_source(config, splits) is source


def test_accuracy_independent_of_eval_batch_and_micro_batch_size(tmp_path):
    import jax

    from train.data.sources import load_splits
    from train.evaluation.evaluators import EvalContext, evaluate_all
    from train.sharding import make_mesh

    config = tiny_config()
    splits = load_splits(config)
    model = tiny_resnet(10, 4)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    mesh = make_mesh()
    config.snn.iterations = (1,)
    runs = []
    for batch, micro_batch in ((7, 0), (360, 0), (360, 50)):   # 50: 8 chunks, last one padded
        config.snn.eval_batch_size = batch
        config.snn.micro_batch = micro_batch
        runs.append(evaluate_all(EvalContext(config, model, splits.test, mesh), variables,
                                 ("ann", "snn")))
    # Accuracies are ratios of discrete counts: other batch sizes compile other
    # programs whose outputs differ by rounding only, which moves no argmax.
    for r in runs:
        assert r["num_test_images"] == 360
        assert r["ann_accuracy"] == runs[0]["ann_accuracy"]
        assert r["snn_accuracy"] == runs[0]["snn_accuracy"]


def test_cli_bad_architecture_exits_with_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train.main", "--config=configs/quickstart.py",
         f"--workdir={tmp_path}", "--config.model.arch=vgg99"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert proc.returncode == 2
    assert "error: unknown architecture 'vgg99'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_analyze_mode_writes_files(tmp_path):
    import json

    from train.job import run

    config = tiny_config()
    config.optim.epochs = 1
    run(config, str(tmp_path))
    config.mode = "analyze"
    run(config, str(tmp_path))
    analysis = json.load(open(tmp_path / "analysis.json"))
    assert set(analysis["settings"]) == {"plain", "cos_rho2_k1", "cos_rho2_k2"}
    for setting in analysis["settings"].values():
        for fractions in setting["offsets"].values():
            assert abs(sum(fractions) - 1) < 1e-9
    assert analysis["settings"]["plain"]["samples"] == 360
    for name in ("analysis_accuracy_vs_T.png", "analysis_accuracy_vs_latency.png",
                 "analysis_offsets.png", "analysis_firing_rates.png"):
        assert os.path.getsize(tmp_path / name) > 1000
    assert "## Offset spikes" in (tmp_path / "analysis.md").read_text()


def test_analyze_mode_analyses_the_methods_at_their_evaluated_accuracy(tmp_path):
    """mode=analyze with snn.methods: every method's accuracy equals the SNN
    evaluation's (parallel neurons: one pass per reported T), offsets are the
    IF neurons' only, and the totals count spikes, events and latency."""
    import json

    from train.job import run

    config = tiny_config(**{"snn.methods": ("srp", "group:3", "parallel", "signed"),
                            "snn.iterations": (1,)})
    config.optim.epochs = 1
    run(config, str(tmp_path))
    evaluated = json.load(open(tmp_path / "results.json"))["snn_accuracy"]
    config.mode = "analyze"
    run(config, str(tmp_path))
    analysis = json.load(open(tmp_path / "analysis.json"))
    settings = analysis["settings"]
    assert list(settings) == ["plain", "cos_rho2_k1", "srp_tau2", "group3", "parallel",
                              "if_signed"]
    for key, setting in settings.items():
        assert setting["accuracy"] == evaluated[key], key
    assert settings["parallel"]["accuracy"][2] is None
    assert settings["group3"]["offsets"] is None and settings["if_signed"]["offsets"] is not None
    group = settings["group3"]["totals_by_T"]["4"]
    assert group["spikes"] > group["events"] > 0
    assert settings["srp_tau2"]["totals_by_T"]["1"]["latency"] == 3
    assert analysis["latency"]["srp_tau2"]["matched"][0] == {
        "latency": 3, "cos_T": 1, "cos": settings["srp_tau2"]["accuracy"][0],
        "plain": settings["plain"]["accuracy"][2]}
    text = (tmp_path / "analysis.md").read_text()
    assert "group neurons m=3, parallel neurons have none." in text
    assert "| parallel neurons | 4 | 4 |" in text


def test_eval_from_pytorch_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    import json

    import jax

    from cosjax.torch_interop import to_torch_state_dict
    from train.job import run

    config = tiny_config(**{"model.arch": "resnet20", "mode": "eval"})
    config.snn.iterations = (1,)
    config.snn.methods = ("group:2",)   # the methods run on the imported weights as they are
    model = ARCHITECTURES["resnet20"](num_classes=10, levels=4)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    torch.save(to_torch_state_dict(variables, "resnet20", 10), tmp_path / "model.pth")
    config.init_from = str(tmp_path / "model.pth")
    run(config, str(tmp_path / "work"))
    results = json.load(open(tmp_path / "work" / "results.json"))
    assert results["num_test_images"] == 360
    assert list(results["snn_accuracy"]) == ["plain", "cos_rho2_k1", "group2"]
    config.model.arch = "resnet18"
    from train.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="cannot import"):
        run(config, str(tmp_path / "work2"))


def test_evaluation_steps_count_non_finite_examples_as_errors():
    import jax

    from train.evaluation.eval_steps import SnnSetting, make_ann_eval_step, make_snn_eval_step
    from train.sharding import make_mesh

    model = tiny_resnet(10, 4)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    shardings = make_mesh()
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    images[1, 2, 3, 0] = np.nan
    images[5] = np.inf
    mask = np.ones(8, bool)
    ann = make_ann_eval_step(model, shardings.data, shardings.replicated)
    # Labels = the predicted class of every finite example; argmax of NaN
    # logits is 0, so label 0 for the broken ones would count without the check.
    logits = np.asarray(model.apply(variables, images))
    labels = np.where(np.isfinite(logits).all(-1), logits.argmax(-1), 0).astype(np.int32)
    correct, count = ann(variables, images, labels, mask)
    assert int(count) == 8 and int(correct) == 6
    snn = make_snn_eval_step(model, SnnSetting(2, 1), 3, shardings.data, shardings.replicated)
    correct, count = snn(variables, images, np.zeros(8, np.int32), mask)
    assert int(count) == 8
    import cosjax  # the same model on the six finite examples alone
    finite = np.delete(np.arange(8), [1, 5])
    alone = cosjax.simulate(model, variables, images[finite], time_steps=3, presim=2)
    np.testing.assert_array_equal(
        np.asarray(correct), np.asarray(cosjax.correct_per_step(alone, np.zeros(6, np.int32))))


# ---------------------------------------------------------------------------
# The snn.methods settings (conversion methods of cosjax.methods).

def test_pipeline_evaluates_each_method_as_a_setting():
    import jax
    import jax.numpy as jnp

    from cosjax import simulate
    from train.data.sources import load_splits
    from train.evaluation.evaluators import EvalContext, evaluate_all
    from train.evaluation.report import latency_table, markdown_table
    from train.sharding import make_mesh
    from train.validate import validate_config

    config = tiny_config(**{"snn.methods": ("srp,group:1", "group:3", "parallel", "signed"),
                            "snn.iterations": (1,)})
    validate_config(config)
    splits = load_splits(config)
    model = tiny_resnet(10, 4)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
    metrics = evaluate_all(EvalContext(config, model, splits.test, make_mesh()), variables,
                           ("ann", "snn"))
    curves = metrics["snn_accuracy"]
    assert list(curves) == ["plain", "cos_rho2_k1", "srp_tau2", "group1", "group3", "parallel",
                            "if_signed"]
    assert curves["group1"] == curves["plain"]           # m = 1 is the IF neuron
    assert metrics["settings"]["srp_tau2"]["latency"] == [3, 4, 5, 6]
    # Parallel neurons: one run per reported T (1, 2, 4); T = 3 is not measured.
    assert curves["parallel"][2] is None and None not in [curves["parallel"][i] for i in (0, 1, 3)]
    from train.data.batching import eval_batches

    correct = 0
    for batch in eval_batches(splits.test, config, 360)[1]:   # the same images, one batch
        out = simulate(model, variables, jnp.asarray(batch["image"]), time_steps=4,
                       method="parallel")
        hits = (np.argmax(np.asarray(out.sum(0)), -1) == batch["label"]) & batch["mask"]
        correct += int(hits.sum())
    assert curves["parallel"][3] == correct / 360
    results = {**metrics, "time_steps": [1, 2, 4], "arch": "tiny", "dataset": "digits",
               "levels": 4}
    results["latency"] = latency_table(results)
    table = markdown_table(results)
    assert "| parallel neurons |" in table and "| SRP tau=2 |" in table and " - |" in table


@pytest.mark.parametrize("methods,message", [
    (("lif",), "snn.methods entry 'lif' is not one of"),
    (("group:0",), "entry 'group:0' is not one of"),
    (("srp:x",), "entry 'srp:x' is not one of"),
])
def test_pipeline_refuses_bad_methods_in_one_line(methods, message):
    from train.errors import ConfigError
    from train.validate import validate_config

    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(**{"snn.methods": methods}))


def test_library_tests_train_with_the_pipelines_arithmetic():
    """tests.helpers trains the shared digits model with its own step (the
    library tests run without the pipeline); it must stay the pipeline's
    training step: one step from the same state gives bitwise the same state."""
    import jax
    import jax.numpy as jnp
    import optax

    from tests import helpers
    from train.training_loop import TrainState, train_step

    model = helpers.tiny_vgg()
    variables = helpers.random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(3), (16, 8, 8, 3))
    labels = jnp.arange(16) % 10
    tx = optax.sgd(0.1, momentum=0.9)
    ours = helpers._TrainState.create(apply_fn=model.apply, params=variables["params"],
                                      batch_stats=variables["batch_stats"], tx=tx)
    theirs = TrainState.create(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables["batch_stats"], tx=tx)
    for _ in range(2):
        ours = jax.jit(helpers._train_step(model))(ours, images, labels)
        theirs, _ = jax.jit(train_step(model))(theirs, images, labels)
    for a, b in zip(jax.tree_util.tree_leaves((ours.params, ours.batch_stats)),
                    jax.tree_util.tree_leaves((theirs.params, theirs.batch_stats))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
