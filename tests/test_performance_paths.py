"""Every fast path gives the results of the straightforward one.

- im2col + matmul convolution (used on CPU for tiny maps) vs lax.conv;
- the CPU compiler options (convolutions left to XLA) vs jax.jit's defaults;
- unrolled IF neurons and calibration vs the lax.scan forms;
- micro-batched SNN evaluation vs the whole batch;

No timings here: speed is measured by ``python -m benchmarks.speed``.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cosjax import layers, xla_options
from cosjax._fused import (
    calibrate_steps,
    if_neuron_blocks,
    if_neuron_steps,
    opaque_one,
    presimulate_steps,
)
from cosjax.layers import Conv2d, conv2d, resolve_conv_impl
from cosjax.models import VGG, ResNet, create_model
from cosjax.neuron import calibrate_v0, if_neuron, presimulate
from cosjax.simulate import _simulate_jit, _simulate_steps, correct_per_step, run_snn, simulate
from tests.helpers import assert_close_across_programs, tiny_resnet, tiny_vgg
from train import training_loop


def _integers(rng, shape, dtype):
    return jnp.asarray(rng.integers(-3, 4, size=shape), dtype)


def random_variables(model, image_shape, seed=0, dtype=jnp.float32):
    """Variables with non-trivial BN statistics and thresholds, drawn with
    NumPy (the shapes come from ``jax.eval_shape``: nothing is compiled)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + image_shape))

    def draw(path, leaf):
        name, shape = jax.tree_util.keystr(path), leaf.shape
        if "lam" in name:
            value = rng.uniform(0.5, 2.0, shape)
        elif "mean" in name:
            value = 0.1 * rng.normal(size=shape)
        elif "var" in name:
            value = rng.uniform(0.5, 1.5, shape)
        elif "scale" in name:
            value = rng.uniform(0.8, 1.2, shape)
        elif "bias" in name:
            value = 0.1 * rng.normal(size=shape)
        else:   # kernels [..., fan_in, fan_out]
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------------------
# Convolution: im2col + matmul vs XLA's convolution.

@pytest.mark.parametrize("size,kernel,stride,padding,dtype", [
    (2, 3, 1, 1, jnp.float32), (4, 3, 1, 1, jnp.float64), (4, 3, 2, 1, jnp.float32),
    (5, 1, 2, 0, jnp.float64), (3, 3, 1, 0, jnp.float32), (1, 3, 1, 1, jnp.float64)])
def test_matmul_conv_is_exact_on_exact_arithmetic(rng, size, kernel, stride, padding, dtype, x64):
    # Integer-valued inputs and weights: every partial sum is exact, so any
    # summation order gives the same bits.
    x = _integers(rng, (3, size, size, 5), dtype)
    w = _integers(rng, (kernel, kernel, 5, 7), dtype)
    ref = conv2d(x, w, stride, padding, impl="xla")
    got = conv2d(x, w, stride, padding, impl="matmul")
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_matmul_conv_random_float64_agrees_to_rounding(rng, x64):
    x = jnp.asarray(rng.normal(size=(4, 4, 4, 16)))
    w = jnp.asarray(rng.normal(size=(3, 3, 16, 8)))
    np.testing.assert_allclose(np.asarray(conv2d(x, w, 1, 1, "matmul")),
                               np.asarray(conv2d(x, w, 1, 1, "xla")), rtol=1e-12, atol=1e-12)


def _ynn_convolutions(hlo_text: str) -> int:
    """How many convolutions a compiled module hands to YNNPACK."""
    bodies = dict(re.findall(r"\n%(\S+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S))
    called = re.findall(r"calls=%([^,\s]+)[^\n]*__ynn_fusion", hlo_text)
    return sum("convolution(" in bodies.get(name, "") for name in called)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_cpu_compiler_options_keep_convolutions_out_of_ynnpack(rng):
    # 64 channels: a shape this jaxlib's defaults hand to YNNPACK.
    x = _integers(rng, (2, 8, 8, 64), jnp.float32)
    w = _integers(rng, (3, 3, 64, 64), jnp.float32)

    def f(x, w):
        return jax.grad(lambda w: jnp.sum(conv2d(x, w, 1, 1, "xla") ** 2))(w)

    options = xla_options.compiler_options()
    plain = jax.jit(f).lower(x, w).compile()
    tuned = xla_options.jit(f).lower(x, w).compile()
    if options:   # this jaxlib accepts the option: it must take effect
        assert _ynn_convolutions(plain.as_text()) > 0
        assert _ynn_convolutions(tuned.as_text()) == 0
        assert "convolution" in tuned.as_text()
    # Integer data: both compilations give the same bits.
    np.testing.assert_array_equal(np.asarray(plain(x, w)), np.asarray(tuned(x, w)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_simulation_and_training_compile_with_the_options(rng):
    if not xla_options.compiler_options():
        pytest.skip("this jaxlib does not accept the CPU option")
    model = ResNet(stage_sizes=(1,), stage_widths=(64,))   # 64->64 convs, as above
    variables = random_variables(model, (8, 8, 3))
    images = _integers(rng, (2, 8, 8, 3), jnp.float32)
    compiled = _simulate_jit().lower(model, variables, images, None, time_steps=2, presim=2,
                                     iterations=1, return_potentials=False).compile()
    assert "convolution" in compiled.as_text()
    assert _ynn_convolutions(compiled.as_text()) == 0
    plain = jax.jit(_simulate_steps, static_argnames=(
        "model", "time_steps", "presim", "iterations", "return_potentials")).lower(
        model, variables, images, None, time_steps=2, presim=2, iterations=1,
        return_potentials=False).compile()
    assert _ynn_convolutions(plain.as_text()) > 0

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = training_loop.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    batch_stats=variables["batch_stats"], tx=optax.sgd(0.1))
    step = training_loop.make_train_step(model, data, replicated)
    compiled = step.lower(state, images, jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32)).compile()
    assert _ynn_convolutions(compiled.as_text()) == 0


def test_compiler_options_per_backend(monkeypatch):
    assert xla_options.compiler_options("gpu") == {}
    assert xla_options.compiler_options("tpu") == {}
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.YNN_FUSION_OPTION}=")
    assert xla_options.compiler_options("cpu") == {}   # the user's XLA_FLAGS win
    monkeypatch.setenv("XLA_FLAGS", "")
    assert xla_options.compiler_options("cpu") in (
        {}, {xla_options.YNN_FUSION_OPTION: xla_options.CPU_YNN_FUSIONS})


def test_auto_conv_choice():
    assert resolve_conv_impl("auto", 4, backend="cpu") == "matmul"
    assert resolve_conv_impl("auto", layers.MATMUL_MAX_PIXELS, backend="cpu") == "matmul"
    assert resolve_conv_impl("auto", layers.MATMUL_MAX_PIXELS + 1, backend="cpu") == "xla"
    assert resolve_conv_impl("auto", 4, backend="gpu") == "xla"
    assert resolve_conv_impl("auto", 4, backend="tpu") == "xla"
    assert resolve_conv_impl("xla", 4, backend="cpu") == "xla"
    assert resolve_conv_impl("matmul", 1024, backend="gpu") == "matmul"
    with pytest.raises(ValueError, match="conv impl"):
        resolve_conv_impl("fft", 4)


def test_conv2d_bad_shapes_raise_value_errors():
    w = jnp.zeros((3, 3, 4, 8))
    with pytest.raises(ValueError, match="channels"):
        conv2d(jnp.zeros((1, 4, 4, 3)), w, 1, 1)
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        conv2d(jnp.zeros((4, 4, 4)), w, 1, 1)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(jnp.zeros((1, 2, 2, 4)), w, 1, 0)


def test_conv2d_module_impl_and_model_conv_impl(rng, monkeypatch):
    x = _integers(rng, (2, 4, 4, 3), jnp.float32)
    variables = Conv2d(6, use_bias=True).init(jax.random.PRNGKey(0), x)
    assert set(variables["params"]) == {"kernel", "bias"}
    assert variables["params"]["kernel"].shape == (3, 3, 3, 6)
    variables = {"params": {"kernel": _integers(rng, (3, 3, 3, 6), jnp.float32),
                            "bias": _integers(rng, (6,), jnp.float32)}}
    outs = {impl: Conv2d(6, use_bias=True, impl=impl).apply(variables, x)
            for impl in ("xla", "matmul")}
    # Integer-valued data: every partial sum is exact, so both forms give the same bits.
    np.testing.assert_array_equal(np.asarray(outs["xla"]), np.asarray(outs["matmul"]))
    # A spy shows which form each convolution asked for: "auto" by default,
    # and a model's conv_impl reaches every one of its convolutions.
    calls = []
    monkeypatch.setattr(layers, "resolve_conv_impl", lambda impl, n, backend=None: (
        calls.append(impl) or ("xla" if impl == "auto" else impl)))
    Conv2d(6, use_bias=True).apply(variables, x)
    assert calls == ["auto"]
    for arch, convs in (("resnet20", 1 + 9 * 2 + 2), ("vgg11", 8)):
        calls.clear()
        model = create_model(arch, 10, 4, conv_impl="matmul")
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
        assert calls == ["matmul"] * convs


def _snn_with_spikes(model, variables, images, steps, presim, iterations, unroll=True):
    """Jitted run_snn (a fresh trace) returning outputs, potentials and every layer's spikes."""
    def run(variables, images):
        spikes = {}
        out, pots = run_snn(model, variables, images, steps=steps, presim=presim,
                            iterations=iterations, unroll=unroll,
                            on_layer=lambda name, x, lam, s: spikes.__setitem__(name, s))
        return out, pots, spikes
    return jax.jit(run)(variables, images)


def test_tiny_maps_matmul_conv_gives_the_same_spikes(x64):
    # A VGG on 4x4 images convolves 4x4 and 2x2 maps (both go to im2col
    # under "auto" on CPU).
    results = {}
    for impl in ("xla", "matmul"):
        model = VGG(blocks=((4,), (6, 6)), num_classes=5, hidden=12, conv_impl=impl)
        variables = random_variables(model, (4, 4, 3), seed=3, dtype=jnp.float64)
        images = jax.random.normal(jax.random.PRNGKey(5), (4, 4, 4, 3), jnp.float64)
        results[impl] = _snn_with_spikes(model, variables, images, 4, 2, 1)
    (out_x, pots_x, spikes_x), (out_m, pots_m, spikes_m) = results["xla"], results["matmul"]
    assert set(spikes_x) == set(spikes_m) and len(spikes_x) == 5
    for name in spikes_x:
        np.testing.assert_array_equal(np.asarray(spikes_m[name]), np.asarray(spikes_x[name]))
        assert_close_across_programs(pots_m[name], pots_x[name], err_msg=name)
    assert all(0 < float(s.mean()) < 1 for s in spikes_x.values())
    assert_close_across_programs(out_m, out_x)


# ---------------------------------------------------------------------------
# IF neurons and calibration: unrolled vs lax.scan.

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unrolled_neuron_and_calibration_are_bitwise_the_scan_forms(rng, dtype, x64):
    x = rng.normal(0.3, 0.8, size=(9, 6, 50)).astype(dtype)
    x[:, 0, :5] = 1.0          # fires every step exactly
    x[:, 1, :5] = -0.4         # never fires
    xs = [jnp.asarray(x[t]) for t in range(9)]
    v0 = jnp.asarray(rng.uniform(-0.5, 1.5, size=(6, 50)).astype(dtype))
    spikes, v = if_neuron(jnp.asarray(x), v0)
    spikes_u, v_u = if_neuron_steps(xs, v0)
    np.testing.assert_array_equal(np.stack([np.asarray(s) for s in spikes_u]), np.asarray(spikes))
    np.testing.assert_array_equal(np.asarray(v_u), np.asarray(v))
    stats = presimulate(jnp.asarray(x[:5]), v0)
    stats_u = presimulate_steps(xs[:5], v0)
    for key in stats:
        np.testing.assert_array_equal(np.asarray(stats_u[key]), np.asarray(stats[key]))
    for rho, k in [(4, 1), (9, 3)]:
        ref = calibrate_v0(jnp.asarray(x), rho, k)
        for rounds in (None, k * opaque_one(jnp.float32(2.0))):
            got = jax.jit(lambda r, rho=rho, k=k: calibrate_steps(
                lambda t: jnp.asarray(x)[t], rho, k, rounds=r))(rounds)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert float(spikes.sum()) > 0 and float(spikes.sum()) < spikes.size


@pytest.mark.parametrize("block", [1, 4, 9])
@pytest.mark.parametrize("stored", [False, True])
def test_neuron_blocks_equal_scan(rng, block, stored):
    x = jnp.asarray(rng.normal(0.4, 0.9, size=(9, 3, 40)))
    v0 = jnp.asarray(rng.uniform(-1, 2, size=(3, 40)))

    def blocks(x, v0):
        one = opaque_one(v0) if stored else None
        x_at = lambda t: (x[t] if isinstance(t, int)
                          else jax.lax.dynamic_index_in_dim(x, t, keepdims=False))
        return jnp.stack(if_neuron_blocks(x_at, 9, v0, block=block, one=one))

    np.testing.assert_array_equal(np.asarray(jax.jit(blocks)(x, v0)),
                                  np.asarray(if_neuron(x, v0)[0]))


def test_opaque_one_is_one():
    assert int(opaque_one(jnp.float32(3.0))) == 1
    assert int(opaque_one(jnp.array([jnp.nan, 1.0]))) == 1
    assert int(jax.jit(opaque_one)(jnp.zeros((2, 3)))) == 1


@pytest.mark.parametrize("make,dtype", [(tiny_vgg, jnp.float32), (tiny_resnet, jnp.float64)])
def test_whole_snn_unrolled_equals_scan(make, dtype, x64):
    model = make()
    variables = random_variables(model, (8, 8, 3), seed=1, dtype=dtype)
    images = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 3), dtype)
    # Spikes (discrete) must be identical in every layer. The calibrated
    # potentials and the outputs are computed from the layers' summed
    # currents, and the two programs may fuse those sums differently (the
    # last dense layer is fused differently on some CPUs: outputs differ by
    # ~1e-16 in float64), so they agree to rounding. The neuron forms alone
    # are bitwise equal on identical inputs:
    # test_unrolled_neuron_and_calibration_are_bitwise_the_scan_forms.
    for steps, presim, k in [(5, 3, 1), (3, 3, 2)]:
        out_f, pots_f, spikes_f = _snn_with_spikes(model, variables, images, steps, presim, k)
        out_s, pots_s, spikes_s = _snn_with_spikes(model, variables, images, steps, presim, k,
                                                   unroll=False)
        assert set(spikes_f) == set(spikes_s) == set(pots_f) == set(pots_s)
        for name in spikes_f:
            assert spikes_f[name].dtype == spikes_s[name].dtype == dtype
            np.testing.assert_array_equal(np.asarray(spikes_f[name]), np.asarray(spikes_s[name]),
                                          err_msg=name)
            assert_close_across_programs(pots_f[name], pots_s[name], err_msg=name)
        assert_close_across_programs(out_f, out_s)
        assert out_f.dtype == dtype


def test_first_linear_layers_run_once_on_the_batch():
    # The layers in front of the first spiking layer see [B, ...], all later
    # ones the time-batched [B*S, ...] (row b*S + t).
    model = tiny_resnet()
    variables = random_variables(model, (8, 8, 3))
    batches = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, Conv2d) and context.method_name == "__call__":
            batches.append(args[0].shape[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        jax.eval_shape(lambda v, x: run_snn(model, v, x, steps=5, presim=2, iterations=1,
                                            check=False),
                       variables, jnp.zeros((3, 8, 8, 3)))
    assert batches[0] == 3 and set(batches[1:]) == {15}


# ---------------------------------------------------------------------------
# Micro-batched evaluation.

@pytest.mark.parametrize("make,m,dtype", [(tiny_vgg, 3, jnp.float64),
                                           (tiny_resnet, 1, jnp.float32)])
def test_micro_batches_give_the_whole_batch_results(make, m, dtype, x64):
    # 7 samples in chunks of 3 (the last one padded) or of 1: a program of
    # another batch size, whose convolutions and dense layers XLA may compile
    # with other kernels. Potentials and outputs therefore agree to rounding
    # (assert_close_across_programs, whose bounds still pin every spike), and
    # the correct counts, being discrete, exactly.
    model = make()
    variables = random_variables(model, (8, 8, 3), seed=4, dtype=dtype)
    images = jax.random.normal(jax.random.PRNGKey(6), (7, 8, 8, 3), dtype)
    ref, ref_pots = simulate(model, variables, images, time_steps=5, presim=3, iterations=2,
                             return_potentials=True)
    out, pots = simulate(model, variables, images, time_steps=5, presim=3, iterations=2,
                         return_potentials=True, micro_batch=m)
    assert out.shape == ref.shape == (5, 7, 10)
    assert_close_across_programs(out, ref)
    assert set(pots) == set(ref_pots)
    for name in ref_pots:
        assert_close_across_programs(pots[name], ref_pots[name], err_msg=name)
    if m == 3:   # given potentials are split the same way as the images
        again = simulate(model, variables, images, time_steps=5, presim=3,
                         initial_potentials=ref_pots, micro_batch=m)
        assert_close_across_programs(again, ref)
    labels = jnp.argmax(ref[-1], -1)
    np.testing.assert_array_equal(np.asarray(correct_per_step(out, labels)),
                                  np.asarray(correct_per_step(ref, labels)))


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "4"])
def test_bad_micro_batch_raises(bad):
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    with pytest.raises(ValueError, match="micro_batch"):
        simulate(model, variables, jnp.zeros((2, 8, 8, 3)), time_steps=2, micro_batch=bad)


def test_run_snn_needs_presim_within_steps():
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    with pytest.raises(ValueError, match="presim"):
        run_snn(model, variables, jnp.zeros((2, 8, 8, 3)), steps=3, presim=5, iterations=1)


def test_micro_batch_refuses_on_layer():
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    with pytest.raises(ValueError, match="on_layer"):
        run_snn(model, variables, jnp.zeros((4, 8, 8, 3)), steps=2, presim=0, iterations=1,
                on_layer=lambda *a: None, micro_batch=2)
