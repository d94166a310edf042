"""Tests of cosjax.analysis (offset spikes, firing rates, synaptic operations)
and cosjax.plots."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import cosjax
from cosjax import QCFS, analysis, correct_per_step, simulate
from cosjax.layers import Conv2d
from cosjax.simulate import layer_name, run_snn
from tests.helpers import tiny_resnet, to_dtype


class HandNet(nn.Module):
    """image [B, 1, 1, 2] -> dense 3 -> QCFS -> dense 2 -> QCFS -> dense 2."""

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        x = QCFS(4, name="act1")(nn.Dense(3, name="fc1")(x))
        x = QCFS(4, name="act2")(nn.Dense(2, name="fc2")(x))
        return nn.Dense(2, name="fc3")(x)


def hand_network():
    """Hand-set float64 weights (all dyadic, so every sum is exact), lam = 1.

    Two samples, x = (1, 0) and (0, 1). act1 gets constant inputs
    u = (0.5, 0.25, 1.0) and (0.25, -1.0, 0.5); from v0 = 1/2 over T = 4 steps
    its neurons a, b, c spike at steps {1,3}, {2}, {1,2,3,4} (sample 1) and
    {2}, {}, {1,3} (sample 2). act2 (neurons p, q) then gets
      sample 1: p = (0.75, -1.75, 0.75, -0.25): spikes {1},  demand 0 -> +1
                q = (-0.25, 0, -0.25, 2.5):     spikes {4},  demand 2 -> -1
      sample 2: p = (-0.25, 1, -0.25, 0):       spikes {2},  demand 1 -> 0
                q = (2.5, -2.75, 2.5, 0):       spikes {1,3}, demand 2 -> 0
    (demand = clip(floor(4 * mean(u) + 1/2), 0, 4)).
    """
    model = HandNet()
    variables = to_dtype(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 1, 2))), jnp.float64)
    params = variables["params"]
    params["fc1"]["kernel"] = jnp.array([[0.5, 0.25, 1.0], [0.25, -1.0, 0.5]])
    params["fc2"]["kernel"] = jnp.array([[1.0, -2.75], [-1.5, -2.5], [-0.25, 2.5]])
    for name in ("fc1", "fc2", "fc3"):
        params[name]["bias"] = jnp.zeros_like(params[name]["bias"])
    params["fc3"]["kernel"] = jnp.array([[1.0, -1.0], [0.5, 2.0]])
    params["act1"]["lam"] = jnp.float64(1.0)
    params["act2"]["lam"] = jnp.float64(1.0)
    images = jnp.array([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])
    return model, variables, images


def numpy_variables(model, image_shape, seed=0):
    """Variables with non-trivial weights, BN statistics and thresholds drawn
    with NumPy (compiling JAX's initialisers costs tens of seconds here)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + image_shape))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "lam" in name:
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif "var" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif "scale" in name:
            value = rng.uniform(0.8, 1.2, leaf.shape)
        elif "kernel" in name:
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(leaf.shape[:-1])), leaf.shape)
        else:   # biases, BN means
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_hand_network_counts_are_exact(x64):
    model, variables, images = hand_network()
    stats = analysis.analyze_batch(model, variables, images, time_steps=4,
                                   labels=jnp.array([0, 1]))
    assert stats["samples"] == 2
    spk = stats["spiking"]
    assert list(spk) == ["act1", "act2"]
    assert spk["act1"]["neurons"] == 3 and spk["act2"]["neurons"] == 2
    np.testing.assert_array_equal(spk["act1"]["spikes"], [3, 3, 3, 1])
    np.testing.assert_array_equal(spk["act2"]["spikes"], [2, 1, 1, 1])
    np.testing.assert_array_equal(spk["act1"]["offsets"], [6, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(spk["act2"]["offsets"], [2, 1, 1, 0, 0, 0])
    lin = stats["linear"]
    assert list(lin) == ["fc1", "fc2", "fc3"]
    assert [lin[n]["analog"] for n in lin] == [True, False, False]
    assert [lin[n]["ann_macs"] for n in lin] == [2 * 3, 3 * 2, 2 * 2]
    # ACs = nonzero inputs x fan-out: act1 fires 3,3,3,1 neurons per step, act2 2,1,1,1.
    np.testing.assert_array_equal(lin["fc1"]["acs"], [0, 0, 0, 0])
    np.testing.assert_array_equal(lin["fc2"]["acs"], [6, 6, 6, 2])
    np.testing.assert_array_equal(lin["fc3"]["acs"], [4, 2, 2, 2])

    summary = analysis.summarize(stats)
    assert summary["firing_rate"] == {"act1": 10 / 24, "act2": 5 / 16}
    assert summary["totals"]["firing_rate"] == 15 / 40
    assert summary["offsets"]["act2"] == [0.5, 0.25, 0.25, 0.0, 0.0, 0.0]
    assert summary["synops"]["fc2"] == {"snn_acs": 10.0, "snn_macs": 0.0, "ann_macs": 6.0}
    assert summary["synops"]["fc1"] == {"snn_acs": 0.0, "snn_macs": 6.0, "ann_macs": 6.0}
    totals = summary["totals"]
    assert (totals["snn_acs"], totals["snn_macs"], totals["ann_macs"]) == (15.0, 6.0, 16.0)
    assert totals["snn_energy_pj"] == pytest.approx(0.9 * 15 + 4.6 * 6)
    assert totals["ann_energy_pj"] == pytest.approx(4.6 * 16)
    every = analysis.summarize(stats, analog_every_step=True)["totals"]
    assert every["snn_macs"] == 6.0 * 4
    first_two = analysis.summarize(stats, time_steps=2)
    assert first_two["firing_rate"] == {"act1": 6 / 12, "act2": 3 / 8}
    assert first_two["totals"]["snn_acs"] == (12 + 6) / 2
    out = simulate(model, variables, images, time_steps=4)
    expected = np.asarray(correct_per_step(out, jnp.array([0, 1]))) / 2
    assert summary["accuracy"] == expected.tolist()


def test_hand_network_calibration_removes_offsets(x64):
    """rho = 4, k = 1: p (sample 1) is shifted to v0 = -1/2 and stays silent,
    q (sample 1) to v0 = 3/2 and fires at steps 1 and 4."""
    model, variables, images = hand_network()
    stats = analysis.analyze_batch(model, variables, images, time_steps=4, presim=4)
    np.testing.assert_array_equal(stats["spiking"]["act2"]["offsets"], [4, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(stats["spiking"]["act2"]["spikes"], [2, 1, 1, 1])
    np.testing.assert_array_equal(stats["spiking"]["act1"]["spikes"], [3, 3, 3, 1])


def test_hand_network_group_neurons_count_member_spikes_and_events(x64):
    """Group neurons, m = 2 (thresholds 1/2 and 1, v0 = 1/4, each member
    spike sends 1/2), on the hand network. act1, sample 1: a (u = 1/2) sends
    1 spike per step, b (1/4) 1,0,1,0, c (1) 2 per step; sample 2: a 1,0,1,0,
    b none, c 1 per step. act2 then gets p = (-1/2, 1/4, -1/2, 1/4) and
    q = (-1/8, 9/8, -1/8, 9/8) (sample 1), p = (3/8, -1/8, 3/8, -1/8) and
    q = (-1/8, 5/4, -1/8, 5/4) (sample 2): p is silent, then fires once at
    step 1 (sample 2); q sends 2 spikes at steps 2 and 4 in both samples."""
    model, variables, images = hand_network()
    stats = analysis.analyze_batch(model, variables, images, time_steps=4,
                                   method=cosjax.Method("group", members=2))
    spk, lin = stats["spiking"], stats["linear"]
    np.testing.assert_array_equal(spk["act1"]["spikes"], [6, 4, 6, 4])
    np.testing.assert_array_equal(spk["act1"]["events"], [5, 3, 5, 3])
    np.testing.assert_array_equal(spk["act2"]["spikes"], [1, 4, 0, 4])
    np.testing.assert_array_equal(spk["act2"]["events"], [1, 2, 0, 2])
    assert spk["act1"]["offsets"] is None and spk["act1"]["presim_spikes"] == 0
    # one accumulate per synapse per event (a 2-spike step is one event): fan-out 2
    np.testing.assert_array_equal(lin["fc2"]["acs"], [10, 6, 10, 6])
    np.testing.assert_array_equal(lin["fc3"]["acs"], [2, 4, 0, 4])
    summary = analysis.summarize(stats)
    assert summary["offsets"] is None and summary["method"] == "group2"
    assert summary["firing_rate"] == {"act1": 20 / 24, "act2": 9 / 16}
    assert (summary["totals"]["spikes"], summary["totals"]["events"]) == (29 / 2, 21 / 2)
    assert summary["totals"]["snn_acs"] == (32 + 10) / 2


def test_group_neurons_of_one_member_analyse_as_if_neurons():
    model = tiny_resnet(10, 4)
    variables = numpy_variables(model, (8, 8, 3))
    images = jax.random.uniform(jax.random.PRNGKey(2), (4, 8, 8, 3))
    plain = analysis.analyze_batch(model, variables, images, time_steps=5)
    group = analysis.analyze_batch(model, variables, images, time_steps=5,
                                   method=cosjax.Method("group", members=1))
    for name, layer in plain["spiking"].items():
        np.testing.assert_array_equal(group["spiking"][name]["spikes"], layer["spikes"])
        np.testing.assert_array_equal(group["spiking"][name]["events"], layer["spikes"])
    for name, layer in plain["linear"].items():
        np.testing.assert_array_equal(group["linear"][name]["acs"], layer["acs"])
    assert sum(layer["spikes"].sum() for layer in plain["spiking"].values()) > 0


def test_methods_analysis_counts_what_their_neurons_send():
    """SRP: the tau steps' spikes and operations are kept apart and added to
    every total (latency tau + t); signed IF: |s| counted, offsets of the net
    count; parallel: figures at T only."""
    model = tiny_resnet(10, 4)
    variables = numpy_variables(model, (8, 8, 3))
    images = jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 3))
    labels = jnp.arange(4)
    srp = analysis.analyze_batch(model, variables, images, time_steps=3, presim=2,
                                 method="srp", labels=labels)
    assert srp["settings"]["method"] == "srp"
    outputs = simulate(model, variables, images, time_steps=5, presim=2, method="srp")
    np.testing.assert_array_equal(srp["correct"], correct_per_step(outputs[2:], labels))
    summary = analysis.summarize(srp, time_steps=2)
    layers = srp["spiking"].values()
    spikes = sum(int(s["spikes"][:2].sum()) + s["presim_spikes"] for s in layers)
    assert sum(s["presim_spikes"] for s in layers) > 0
    neurons = sum(s["neurons"] for s in layers)
    assert summary["totals"]["firing_rate"] == spikes / (neurons * 4 * (2 + 2))
    assert summary["totals"]["latency"] == 4 and summary["totals"]["spikes"] == spikes / 4
    acs = sum(float(layer["acs"][:2].sum()) + layer["presim_acs"]
              for layer in srp["linear"].values())
    assert summary["totals"]["snn_acs"] == acs / 4

    signed = analysis.analyze_batch(model, variables, images, time_steps=6,
                                    method=cosjax.Method("if", signed=True))
    plain = analysis.analyze_batch(model, variables, images, time_steps=6)
    assert analysis.summarize(signed)["offsets"] is not None
    first = next(iter(plain["spiking"]))           # constant input: no -1 to send there
    np.testing.assert_array_equal(signed["spiking"][first]["spikes"],
                                  plain["spiking"][first]["spikes"])
    for layer in signed["spiking"].values():       # a +1 or a -1 is one spike and one event
        np.testing.assert_array_equal(layer["spikes"], layer["events"])

    parallel = analysis.analyze_batch(model, variables, images, time_steps=4,
                                      method="parallel", labels=labels)
    summary = analysis.summarize(parallel)
    assert summary["accuracy"][:3] == [None] * 3
    last = simulate(model, variables, images, time_steps=4, method="parallel")
    assert summary["accuracy"][3] == float(correct_per_step(last, labels)[-1]) / 4
    with pytest.raises(ValueError, match="not the prefix of a longer one"):
        analysis.summarize(parallel, time_steps=2)


def test_window_is_independent_of_time_steps(x64):
    model, variables, images = hand_network()
    long = analysis.analyze_batch(model, variables, images, time_steps=2, window=4)
    assert long["settings"]["window"] == 4 and long["spiking"]["act1"]["spikes"].shape == (2,)
    np.testing.assert_array_equal(long["spiking"]["act2"]["offsets"], [2, 1, 1, 0, 0, 0])
    # Window 2: act2 sees p = (0.75, -1.75), q = (-0.25, 0) (sample 1) and
    # p = (-0.25, 1), q = (2.5, -2.75) (sample 2); p (sample 1) and q (sample 2)
    # fire once where the demand is clip(floor(2 * mean + 1/2), 0, 2) = 0: +1.
    short = analysis.analyze_batch(model, variables, images, time_steps=4, window=2)
    np.testing.assert_array_equal(short["spiking"]["act2"]["offsets"], [2, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(short["spiking"]["act1"]["offsets"], [6, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(short["spiking"]["act2"]["spikes"], [2, 1, 1, 1])


def test_offset_bins():
    offsets = jnp.array([[0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 7.0],
                         [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, -2.0, -2.0]])
    np.testing.assert_array_equal(analysis._offset_bins(offsets),
                                  [[1, 1, 1, 1, 1, 3], [4, 2, 0, 0, 2, 0]])
    assert analysis.offset_fractions([2, 1, 1, 0, 0, 0]) == [0.5, 0.25, 0.25, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("kernel,stride,padding,size", [(3, 1, 1, 5), (3, 2, 1, 7), (1, 2, 0, 6),
                                                         (3, 2, 1, 8)])
def test_conv_fan_out_equals_transposed_ones_convolution(kernel, stride, padding, size):
    conv = Conv2d(5, kernel, stride, padding)
    fan = analysis.fan_out(conv, (size, size, 2))
    ones = jnp.ones((kernel, kernel, 2, 5))

    def apply(x):
        return lax.conv_general_dilated(x, ones, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x = jnp.zeros((1, size, size, 2))
    out, transpose = jax.vjp(apply, x)
    (expected,) = transpose(jnp.ones_like(out))
    np.testing.assert_array_equal(fan, np.asarray(expected[0]))
    assert fan.dtype == np.int64
    np.testing.assert_array_equal(analysis.fan_out(nn.Dense(7), (4,)), np.full(4, 7))


def test_resnet_operations_equal_an_independent_count():
    """ACs of every linear layer = sum of conv(nonzero(input), ones kernel)."""
    model = tiny_resnet()
    variables = numpy_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
    T, S = 3, 4   # window 4 > T: S = 4 steps are simulated, operations counted over 3
    stats = analysis.analyze_batch(model, variables, images, time_steps=T, window=S)
    modules = {}

    def count(module, a):
        """Synapses used by the nonzero entries of ``a``: a conv with an
        all-ones kernel applied to the indicator, summed per sample."""
        a = (a != 0).astype(jnp.float32)
        if isinstance(module, Conv2d):
            k, s, p = module.kernel_size, module.stride, module.padding
            ones = jnp.ones((k, k, a.shape[-1], module.features), jnp.float32)
            a = lax.conv_general_dilated(a, ones, (s, s), [(p, p)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:
            a = a * module.features
        return a.reshape(a.shape[0], -1).sum(axis=1)

    @jax.jit
    def independent_counts(variables, images):
        counts = {}

        def capture(next_fun, args, kwargs, context):
            module, x = context.module, args[0]
            if isinstance(module, (Conv2d, nn.Dense)) and context.method_name == "__call__":
                name = layer_name(module)
                modules[name] = module
                counts[name] = (count(module, jnp.ones_like(x[:1]))[0],     # ANN MACs
                                count(module, x), x.shape[0])               # per (t, b) or b
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(capture):
            run_snn(model, variables, images, steps=S, presim=0, iterations=1)
        return {name: c[:2] for name, c in counts.items()}

    counts = independent_counts(variables, images)
    assert list(modules) == list(stats["linear"])
    for name, (ann, per_sample) in counts.items():
        layer = stats["linear"][name]
        assert layer["ann_macs"] == int(ann)
        if name == "stem_conv":
            assert layer["analog"] and per_sample.shape == (3,)
            continue
        assert not layer["analog"]
        per_step = np.asarray(per_sample).reshape(3, S).sum(axis=0)[:T]   # rows b*S + t
        np.testing.assert_array_equal(layer["acs"], per_step.astype(np.int64))
        assert layer["acs"].sum() > 0
    summary = analysis.summarize(stats)
    for name, layer in stats["spiking"].items():
        assert layer["offsets"].sum() == 3 * layer["neurons"]
        assert sum(summary["offsets"][name]) == pytest.approx(1.0, abs=1e-12)
    # The first spiking layer's input is constant: from v0 = 1/2 it fires
    # exactly the QCFS count, so plain conversion has no offsets there.
    assert summary["offsets"]["stem_act"][0] == 1.0
    assert min(f[0] for f in summary["offsets"].values()) < 1.0


def test_mask_excludes_padding_and_batches_add_up(x64):
    model, variables, images = hand_network()
    images = jnp.concatenate([images, jnp.array([[[[0.75, 0.5]]], [[[-1.0, 2.0]]]])])
    labels = jnp.array([0, 1, 1, 0])
    kwargs = dict(time_steps=4, presim=2)
    padded = analysis.analyze_batch(model, variables, images, labels=labels,
                                    mask=jnp.array([True, True, False, True]), **kwargs)
    kept = jnp.array([0, 1, 3])
    whole = analysis.analyze_batch(model, variables, images[kept], labels=labels[kept], **kwargs)
    parts = analysis.analyze_batches(   # add_stats over two masked batches
        model, variables, [(images, labels, jnp.array([True, False, False, False])),
                           (images, labels, jnp.array([False, True, False, True]))], **kwargs)
    for other in (whole, parts):
        assert other["samples"] == padded["samples"] == 3
        np.testing.assert_array_equal(other["correct"], padded["correct"])
        for name, layer in padded["spiking"].items():
            np.testing.assert_array_equal(other["spiking"][name]["spikes"], layer["spikes"])
            np.testing.assert_array_equal(other["spiking"][name]["offsets"], layer["offsets"])
        for name, layer in padded["linear"].items():
            np.testing.assert_array_equal(other["linear"][name]["acs"], layer["acs"])
    unmasked = analysis.analyze_batch(model, variables, images, labels=labels, **kwargs)
    assert unmasked["spiking"]["act1"]["spikes"].sum() > padded["spiking"]["act1"]["spikes"].sum()
    summary = analysis.summarize(padded)
    assert summary["accuracy"] == (padded["correct"] / 3).tolist()
    for layer in padded["spiking"].values():
        assert layer["offsets"].sum() == 3 * layer["neurons"]


def _zero_share(summary, stats):
    return {name: f[0] for name, f in summary["offsets"].items()}, \
        sum(int(s["offsets"][0]) for s in stats["spiking"].values()) / \
        sum(int(s["offsets"].sum()) for s in stats["spiking"].values())


@pytest.mark.slow
def test_trained_network_offsets(trained_digits):
    """Calibration (rho = 4, k = 1) never lowers the share of zero offsets
    over the window W = T = 4; plain conversion's offsets vanish as rates at
    large W: the mean |offset| / W over all neurons, i.e. the error of the
    firing rate, is below 1e-3 at W = 64 and a quarter or less of its value
    at W = 4 (as counts they do not vanish: a few percent of neurons keep an
    offset of +-1, but none reaches |offset| >= 3)."""
    m = trained_digits
    images, labels = jnp.asarray(m.test_images[:256]), jnp.asarray(m.test_labels[:256])
    plain = analysis.analyze_batch(m.model, m.variables, images, time_steps=4, labels=labels)
    cos = analysis.analyze_batch(m.model, m.variables, images, time_steps=4, presim=4,
                                 iterations=1, labels=labels)
    plain_layers, plain_all = _zero_share(analysis.summarize(plain), plain)
    cos_layers, cos_all = _zero_share(analysis.summarize(cos), cos)
    for name in plain_layers:
        assert cos_layers[name] >= plain_layers[name], (name, plain_layers, cos_layers)
    assert cos_all > plain_all
    assert plain_layers["layer1_act0"] == 1.0

    def rate_error(stats):
        counts = sum(s["offsets"] for s in stats["spiking"].values())
        assert counts[5] == 0
        mean_abs = (counts[1] + counts[2] + 2 * (counts[3] + counts[4])) / counts.sum()
        return mean_abs / stats["settings"]["window"]

    long = analysis.analyze_batch(m.model, m.variables, images, time_steps=64, labels=labels)
    assert rate_error(long) < 1e-3
    assert rate_error(long) <= rate_error(plain) / 4
    accuracy = analysis.summarize(long)["accuracy"]
    assert accuracy[-1] >= m.ann_accuracy - 0.03


def test_latency_comparison():
    plain = [0.1, 0.5, 0.7, 0.8, 0.85, 0.9]
    cos = [0.6, 0.8, 0.9]
    result = analysis.latency_comparison(plain, cos, 2)
    assert result["cos"] == {"latency": [3, 4, 5], "accuracy": cos}
    assert result["plain"] == {"latency": [1, 2, 3, 4, 5, 6], "accuracy": plain}
    assert result["matched"] == [
        {"latency": 3, "cos_T": 1, "cos": 0.6, "plain": 0.7},
        {"latency": 4, "cos_T": 2, "cos": 0.8, "plain": 0.8},
        {"latency": 5, "cos_T": 3, "cos": 0.9, "plain": 0.85}]
    assert len(analysis.latency_comparison(plain, cos, 5)["matched"]) == 1


def test_invalid_arguments(x64):
    model, variables, images = hand_network()
    with pytest.raises(ValueError, match="window"):
        analysis.analyze_batch(model, variables, images, time_steps=2, window=0)
    with pytest.raises(ValueError, match="mask"):
        analysis.analyze_batch(model, variables, images, time_steps=2, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match="labels"):
        analysis.analyze_batch(model, variables, images, time_steps=2, labels=jnp.zeros(2))
    with pytest.raises(ValueError, match="presim"):
        analysis.analyze_batch(model, variables, images, time_steps=2, presim=-1)
    with pytest.raises(ValueError, match="images"):
        analysis.analyze_batch(model, variables, images[0, 0, 0, 0], time_steps=2)
    stats = analysis.analyze_batch(model, variables, images, time_steps=2)
    with pytest.raises(ValueError, match="time_steps"):
        analysis.summarize(stats, time_steps=3)
    other = analysis.analyze_batch(model, variables, images, time_steps=2, presim=1)
    with pytest.raises(ValueError, match="settings"):
        analysis.add_stats(stats, other)
    with pytest.raises(ValueError, match="zero"):
        analysis.offset_fractions([0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="presim"):
        analysis.latency_comparison([0.5], [0.5], -1)
    with pytest.raises(ValueError, match="no fan-out rule"):
        analysis.fan_out(QCFS(4), (4,))
    with pytest.raises(ValueError, match="iterations"):
        analysis.analyze_batch(model, variables, images, time_steps=2, iterations=2)


class FlaxConvNet(nn.Module):
    """flax.linen.Conv (strided, SAME padding) and Dense, or the cosjax
    Conv2d with the same kernel: the same network."""

    cosjax_conv: bool = False

    @nn.compact
    def __call__(self, x):
        x = QCFS(4, name="act0")(x)
        if self.cosjax_conv:
            x = Conv2d(3, 3, 2, 1, use_bias=True, name="conv")(x)
        else:
            x = nn.Conv(3, (3, 3), (2, 2), padding=1, name="conv")(x)
        x = QCFS(4, name="act")(x)
        return nn.Dense(2, name="fc")(x.reshape(x.shape[0], -1))


def test_flax_conv_and_dense_are_counted_from_the_traced_program():
    model = FlaxConvNet()
    variables = numpy_variables(model, (5, 5, 2), seed=3)
    images = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 2))
    stats = analysis.analyze_batch(model, variables, images, time_steps=3)
    same = analysis.analyze_batch(FlaxConvNet(cosjax_conv=True), variables, images, time_steps=3)
    assert list(stats["linear"]) == ["conv", "fc"]
    for name in ("conv", "fc"):
        assert stats["linear"][name]["ann_macs"] == same["linear"][name]["ann_macs"]
        np.testing.assert_array_equal(stats["linear"][name]["acs"], same["linear"][name]["acs"])
        assert stats["linear"][name]["acs"].sum() > 0
    # 3x3 stride 2 on 5x5 with padding 1: the three output rows read 2, 3 and 2
    # real input rows (the rest is padding), likewise columns; 2 in, 3 out channels.
    assert stats["linear"]["conv"]["ann_macs"] == (2 + 3 + 2) ** 2 * 2 * 3
    assert stats["linear"]["fc"]["ann_macs"] == 27 * 2


def test_import_cosjax_does_not_import_matplotlib():
    code = ("import sys, cosjax, cosjax.analysis; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))


def test_plots_write_complete_pngs(tmp_path):
    from cosjax import plots
    offsets = {"plain": {"act1": [0.9, 0.05, 0.05, 0, 0, 0], "act2": [0.8, 0.1, 0.05, 0.03, 0.01, 0.01]},
               "COS k=1": {"act1": [1.0, 0, 0, 0, 0, 0], "act2": [0.97, 0.01, 0.01, 0.01, 0, 0]}}
    latency = analysis.latency_comparison([0.2, 0.6, 0.8, 0.9], [0.7, 0.9], 2)
    paths = [
        plots.plot_accuracy_vs_time(tmp_path / "t.png", {"plain": [0.2, 0.6, 0.8],
                                                         "COS k=1": [0.7, 0.9, 0.9]},
                                    ann_accuracy=0.92),
        plots.plot_accuracy_vs_latency(tmp_path / "l.png", {"plain": latency["plain"],
                                                            "COS": latency["cos"]}),
        plots.plot_offset_histograms(tmp_path / "sub" / "o.png", offsets),
        plots.plot_firing_rates(tmp_path / "r.png", {"plain": {"act1": 0.1, "act2": 0.2},
                                                      "COS": {"act1": 0.1, "act2": 0.15}}),
        plots.plot_accuracy_vs_cost(tmp_path / "c.png", {
            "plain": {"cost": [1e5, 3e5, 9e5], "accuracy": [0.2, 0.6, 0.8]},
            "group": {"cost": [4e5, 8e5], "accuracy": [0.8, 0.9]}}, ann_accuracy=0.92),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(path) > 10_000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == \
        ["c.png", "l.png", "o.png", "r.png", "t.png"]
    with pytest.raises(ValueError, match="layers"):
        plots.plot_offset_histograms(tmp_path / "x.png",
                                     {"a": offsets["plain"], "b": {"act1": offsets["plain"]["act1"]}})
    with pytest.raises(ValueError, match="curve"):
        plots.plot_accuracy_vs_time(tmp_path / "x.png", {"plain": []})
    with pytest.raises(ValueError, match="of equal length"):
        plots.plot_accuracy_vs_cost(tmp_path / "x.png", {"a": {"cost": [1, 2], "accuracy": [0.5]}})
    assert not (tmp_path / "x.png").exists()
