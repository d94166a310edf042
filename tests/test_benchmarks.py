"""The benchmark programs run and parse their command lines (no timing here:
timings are what the programs print)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed as benchmark
from cosjax.models import create_model


@pytest.mark.parametrize("argv,match", [
    (["--arch", "vgg99"], "invalid choice"), (["--batch", "0"], "positive"),
    (["--time-steps", "1,0"], ">= 1"), (["--presim", "-1"], ">= 0"),
    (["--micro-batch", "x"], "positive"), (["--image-size", "20"], "multiple of 32"),
    (["--arch", "resnet20", "--image-size", "6"], "multiple of 4"),
    (["--conv-impl", "fft"], "invalid choice")])
def test_benchmark_cli_errors(capsys, argv, match):
    with pytest.raises(SystemExit) as err:
        benchmark.parse_args(argv)
    assert err.value.code == 2
    assert match in capsys.readouterr().err


def test_benchmark_cli_parses_lists():
    args = benchmark.parse_args(["--time-steps", "1,8", "--presim", "0,4", "--iterations", "2",
                                 "--micro-batch", "none,8"])
    assert args.time_steps == [1, 8] and args.micro_batch == [None, 8]
    assert benchmark.snn_settings([1, 8], [0, 4], [1, 2]) == [
        (1, 0, 1), (1, 4, 1), (1, 4, 2), (8, 0, 1), (8, 4, 1), (8, 4, 2)]


@pytest.mark.parametrize("arch,image_size,activation", [("vgg11", 32, "relu"),
                                                        ("resnet20", 8, "qcfs"),
                                                        ("fastnet", 32, "qcfs")])
def test_torch_yardstick_has_the_same_layout(arch, image_size, activation):
    torch = pytest.importorskip("torch")
    options = {"widths": (8, 16, 16)} if arch == "fastnet" else {}
    model = create_model(arch, 10, 4, **options)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                               jnp.zeros((1, image_size, image_size, 3)))
    params = jax.tree_util.tree_leaves_with_path(variables["params"])
    counts = {"qcfs": sum(int(np.prod(p.shape)) for _, p in params)}
    counts["relu"] = counts["qcfs"] - sum(1 for path, _ in params
                                          if "lam" in jax.tree_util.keystr(path))
    net = benchmark.build_torch_model(model, image_size, activation)
    assert sum(p.numel() for p in net.parameters()) == counts[activation]
    out = net.train()(torch.randn(2, 3, image_size, image_size))
    assert tuple(out.shape) == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.slow
def test_benchmark_runs_end_to_end_on_a_tiny_setting():
    args = benchmark.parse_args(["--arch", "resnet20", "--batch", "2", "--image-size", "4",
                                 "--time-steps", "2", "--presim", "3", "--iterations", "1",
                                 "--micro-batch", "1", "--repeats", "1", "--skip-train"])
    lines = []

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    rows = benchmark.run(args, out=Out())
    names = [r.what for r in rows]
    assert names == ["ANN forward", "SNN T=2 rho=3 k=1 mb=1"]
    assert rows[1].steps == 3 and rows[1].ratio > 0 and rows[0].ratio is None
    assert all(r.seconds > 0 for r in rows)
    assert "SNN / (S x ANN)" in "".join(lines)


def test_benchmark_compile_only_reports_memory_without_timing(capsys):
    args = benchmark.parse_args(["--arch", "resnet20", "--batch", "2", "--image-size", "4",
                                 "--time-steps", "2", "--presim", "3", "--iterations", "1",
                                 "--micro-batch", "none,1", "--compile-only"])
    rows = benchmark.run(args)
    assert [r.what for r in rows] == ["ANN forward", "SNN T=2 rho=3 k=1",
                                      "SNN T=2 rho=3 k=1 mb=1", "train step (SGD, BN train)"]
    assert all(np.isnan(r.seconds) and r.compile_s > 0 and r.xla_mib > 0 for r in rows)
    table = benchmark.format_table(rows)
    assert "nan" not in table and "| SNN T=2 rho=3 k=1 mb=1 |  |  | 3 |" in table
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--compile-only", "--torch"])
    assert "drop --torch" in capsys.readouterr().err


def test_conv_layer_diagnostic_runs(monkeypatch, capsys):
    pytest.importorskip("torch")
    from benchmarks import conv_layer

    monkeypatch.setattr(conv_layer, "SHAPES", ((4, 4),))
    monkeypatch.setattr("sys.argv", ["conv_layer", "--batch", "2", "--repeats", "1",
                                     "--block", "1"])
    conv_layer.main()
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("4->4 on 4x4: JAX forward ") and out[1].endswith("x PyTorch")


def test_static_compared_benchmark_runs_on_a_trained_workdir(tmp_path):
    """The static-calibration benchmark loads a pipeline checkpoint (config
    file plus overrides, as train.main) and its plain row equals simulate."""
    import json

    from benchmarks import static_compared as static_bench
    from cosjax import correct_per_step, simulate
    from tests.configs import tiny
    from train import architectures, job
    from train.data import batching
    from train.data.sources import load_splits
    from train.sharding import make_mesh

    config = tiny.get_config()
    config.optim.epochs = 1
    config.snn.time_steps = (1,)
    config.snn.presim = 0
    config.snn.max_eval_examples = 20
    job.run(config, str(tmp_path))
    out = tmp_path / "static.json"
    argv = ["static_compared", f"--config={tiny.__file__}", "--config.optim.epochs=1",
            f"--workdir={tmp_path}", "--calib_size=16", "--windows=2", "--estimators=grid",
            "--granularities=layer", "--cos_iterations=1", "--presim=2", "--time_steps=3",
            "--max_test=30", "--batch=16", f"--out={out}"]
    assert static_bench.main(argv) == 0
    results = json.load(open(out))
    assert set(results["accuracy"]) == {"cos_rho2_k1", "plain", "static_grid_layer_W2"}
    assert results["test_images"] == 30 and results["calib_images"] == 16
    assert all(len(acc) == 3 for acc in results["accuracy"].values())

    splits = load_splits(config)
    model = architectures.from_config(config, splits.num_classes)
    variables = job.load_for_eval(config, str(tmp_path), model, splits, make_mesh())
    _, eval_example = batching.transforms(config)
    examples = [eval_example(splits.test[i]) for i in range(30)]
    images = np.stack([e["image"] for e in examples]).astype(np.float32)
    labels = np.asarray([e["label"] for e in examples])
    correct = correct_per_step(simulate(model, variables, images, time_steps=3), labels,
                               np.ones(30, bool))
    np.testing.assert_array_equal(np.rint(np.asarray(results["accuracy"]["plain"]) * 30),
                                  np.asarray(correct))


def test_static_compared_benchmark_needs_config_and_workdir(capsys):
    from benchmarks import static_compared as static_bench

    assert static_bench.main(["static_compared"]) == 2
    assert "usage" in capsys.readouterr().err


def test_jpeg_decode_benchmark_smoke(capsys):
    from benchmarks import jpeg_decode

    assert jpeg_decode.main(["bench", "--sizes=64x48", "--images=2", "--repeats=1"]) == 0
    out = capsys.readouterr().out
    for name in jpeg_decode.TRANSFORMS:
        assert f"| 64x48 | {name} |" in out, out


@pytest.mark.parametrize("method,presim", [
    ("if", 0), (("group", 1), 0), (("group", 4), 0), ("srp", 2), ("parallel", 0), ("signed", 0)])
def test_methods_compared_counts_as_the_analysis_does(method, presim):
    """benchmarks/methods_compared.py's accuracy, spikes, events and synaptic
    operations of every method equal cosjax.analysis's, step by step
    (cumulative, SRP's tau steps counted at every T); group neurons with
    m = 1 count what IF neurons do."""
    import jax
    import jax.numpy as jnp

    from benchmarks import methods_compared
    from cosjax import Method, analysis
    from tests.helpers import random_variables, tiny_resnet

    method = (Method("group", members=method[1]) if isinstance(method, tuple) else
              Method("if", signed=True) if method == "signed" else Method(method))
    model = tiny_resnet(10, 4)
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 3))
    labels, mask = jnp.arange(6) % 10, jnp.array([True] * 5 + [False])
    stats = analysis.analyze_batch(model, variables, images, time_steps=4, presim=presim,
                                   mask=mask, labels=labels, method=method)
    layers, linear = stats["spiking"].values(), stats["linear"].values()
    acs = np.cumsum(sum(layer["acs"] for layer in linear)) + sum(
        layer["presim_acs"] for layer in linear)
    spikes = np.cumsum(sum(s["spikes"] for s in layers)) + sum(s["presim_spikes"] for s in layers)
    events = np.cumsum(sum(s["events"] for s in layers)) + sum(s["presim_events"] for s in layers)
    profile = analysis.network_profile(model, variables, (8, 8, 3))
    fans = {name: jnp.asarray(fan, jnp.int32) for name, fan in profile["fan_out"].items()}
    assert acs[-1] > 0
    correct, got_spikes, got_events, synops = jax.device_get(
        methods_compared._step(model, method, presim, 4, fans)(variables, images, labels, mask))
    np.testing.assert_array_equal(correct, stats["correct"])
    np.testing.assert_array_equal(got_spikes, spikes)
    np.testing.assert_array_equal(got_events, events)
    np.testing.assert_array_equal(synops, acs)
    if method == Method("group", members=1):
        plain = analysis.analyze_batch(model, variables, images, time_steps=4, mask=mask,
                                       labels=labels)
        np.testing.assert_array_equal(spikes, np.cumsum(sum(
            s["spikes"] for s in plain["spiking"].values())))


@pytest.mark.parametrize("name", ["input_pipeline", "jpeg_decode", "static_compared"])
def test_flag_benchmarks_answer_help_and_bad_flags_without_a_traceback(name, capsys):
    import importlib

    bench = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as done:
        bench.main([name, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith(f"usage: python -m benchmarks.{name}")
    with pytest.raises(SystemExit) as done:
        bench.main([name, "--no_such_flag=1"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: Unknown command line flag 'no_such_flag'")
    assert "Traceback" not in err


def test_aot_shares_a_chip_between_the_tensorcores_it_exposes():
    """benchmarks.aot: where the topology's devices are TensorCores (v4: two
    per chip, the same coords), each device gets half of the chip's HBM,
    FLOP/s and bandwidth; one device per chip keeps the chip's figures."""
    from types import SimpleNamespace

    from benchmarks.aot import CHIPS, per_device

    cores = [SimpleNamespace(id=i, process_index=i // 8, coords=(i // 2 % 2, i // 4 % 2, i // 8))
             for i in range(16)]
    chip, per_chip = per_device("v4", cores)
    assert per_chip == 2 and chip.hbm_gib == CHIPS["v4"].hbm_gib / 2
    assert chip.bf16_tflops == CHIPS["v4"].bf16_tflops / 2
    chips = [SimpleNamespace(id=i, process_index=0, coords=(i % 2, i // 2, 0)) for i in range(4)]
    assert per_device("v5e", chips) == (CHIPS["v5e"], 1)


def test_methods_compared_refuses_a_latency_with_no_step_after_presimulation(capsys):
    from benchmarks import methods_compared

    with pytest.raises(SystemExit) as done:
        methods_compared.main(["--config=configs/quickstart.py", "--workdir=unused",
                               "--max-latency", "4", "--methods", "plain,cos:4"])
    assert done.value.code == 2
    assert "--max-latency 4 leaves no step after the 4 pre-simulation steps of COS rho=4" in (
        capsys.readouterr().err)


def test_methods_compared_resumes_from_the_methods_its_json_kept(tiny_run, tmp_path, capsys):
    """The JSON is rewritten after each method; ``--resume`` reuses the methods
    it holds (here: an interrupted run that finished only plain conversion)
    and measures the rest, to the same figures as one uninterrupted run; a
    file measured with other settings is refused in one line."""
    import json

    from benchmarks import methods_compared

    out = tmp_path / "out.json"
    base = ["--config=tests/configs/tiny.py", f"--workdir={tiny_run}", "--examples", "40",
            "--batch", "20", "--max-latency", "3", "--methods", "plain,signed",
            "--table-latencies", "1,3", "--json", str(out)]
    assert methods_compared.main(base) == 0
    whole = json.loads(out.read_text())
    assert list(whole["methods"]) == ["plain conversion", "signed IF"]
    assert not (tmp_path / "out.json.partial").exists()
    interrupted = dict(whole, methods={"plain conversion": whole["methods"]["plain conversion"]},
                       seconds={"plain conversion": whole["seconds"]["plain conversion"]})
    out.write_text(json.dumps(interrupted))
    capsys.readouterr()
    assert methods_compared.main(base + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "plain conversion: reused from" in captured.err
    assert "signed IF T=3: done" in captured.err and "plain conversion T=3" not in captured.err
    assert json.loads(out.read_text())["methods"] == whole["methods"]
    assert methods_compared.main(base + ["--resume", "--plots", str(tmp_path / "plots")]) == 0
    for name in ("accuracy_vs_latency.png", "accuracy_vs_synops.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as done:
        methods_compared.main([a if a != "3" else "2" for a in base] + ["--resume"])
    assert str(done.value) == (f"error: --resume: {out} was measured with max_latency=3, "
                               "this run has 2")


def test_plan_configs_lists_every_run_config_and_summarises_a_plan():
    from benchmarks import plan_configs

    configs = plan_configs.all_configs()
    assert "configs/cifar100.py" in configs and "configs/quickstart.py" in configs
    assert not {"configs/default.py", "configs/__init__.py"} & set(configs)
    assert plan_configs.plan_path("out", "configs/cifar100.py", "gpu:h100:8") == \
        "out/cifar100__gpu-h100-8.json"
    plan = {"programs": [
        {"program": "train step", "compiled": True, "fits": True, "total_gib": 0.5,
         "estimate_images_s": 1000.4},
        {"program": "SNN plain S=8", "compiled": True, "fits": False, "total_gib": 90.0,
         "estimate_images_s": 20.0},
        {"program": "SNN cos_rho4_k1 S=8", "compiled": False, "error": "refused at start-up"}]}
    assert plan_configs.summary_row("c.py", "gpu:h100", plan, "") == (
        "| c.py | gpu:h100 | 1 of 3 | 90.00 (SNN plain S=8) | 1000 | 20 (SNN plain S=8) "
        "| SNN cos_rho4_k1 S=8: refused at start-up |")
    assert plan_configs.summary_row("c.py", "gpu:h100", None, "no plan (exit 1)") == \
        "| c.py | gpu:h100 | no plan (exit 1) | | | | |"
