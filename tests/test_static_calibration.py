"""Tests of cosjax.static_calibration (static initial potentials from data)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosjax import QCFS, analysis, simulate
from cosjax import static_calibration as sc
from cosjax.layers import Conv2d
from tests.helpers import digits_data, random_variables, to_dtype
from tests.test_analysis import hand_network


class TwoConvNet(nn.Module):
    """image [B, 4, 4, 2] -> conv 3 -> QCFS -> conv 4 -> QCFS -> mean -> dense 2."""

    @nn.compact
    def __call__(self, x, train=False):
        x = QCFS(4, name="act1")(Conv2d(3, use_bias=True, name="conv1")(x))
        x = QCFS(4, name="act2")(Conv2d(4, use_bias=True, name="conv2")(x))
        return nn.Dense(2, name="fc")(x.mean(axis=(1, 2)))


def two_conv(seed, samples):
    """The net with random variables (thresholds in [0.5, 2]) and images."""
    model = TwoConvNet()
    variables = random_variables(model, (4, 4, 2), seed=seed)
    images = 2 * np.random.default_rng(seed).normal(size=(samples, 4, 4, 2)).astype(np.float32)
    return model, variables, images


def float32_hand_network():
    """The hand network of test_analysis in float32 (its values are dyadic
    with few bits, so every sum stays exact)."""
    with jax.enable_x64(True):   # hand_network builds float64 weights
        model, variables, images = hand_network()
        variables = jax.tree_util.tree_map(np.asarray, variables)
    return model, to_dtype(variables, jnp.float32), np.asarray(images, np.float32)


def test_grid_estimator_by_hand():
    """Sample 1 of the hand network, W = 4: act1's input is constant (no
    offsets at 1/2, so 1/2 stays); act2 gets p = (0.75, -1.75, 0.75, -0.25),
    demand 0, and q = (-0.25, 0, -0.25, 2.5), demand 2. From v0 = c, p is
    silent iff c + 0.75 < 1, and the grid point nearest 1/2 below 1/4 is
    1/8; q fires twice iff c - 0.25 >= 1 (steps 1 and 4), i.e. c >= 5/4."""
    model, variables, images = float32_hand_network()
    v0 = sc.calibrate_static(model, variables, images[:1], window=4, estimator="grid")
    assert list(v0) == ["act1", "act2"]
    np.testing.assert_array_equal(v0["act1"], [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(v0["act2"], [0.125, 1.25])
    assert v0["act2"].dtype == np.float32
    counts = sc.offset_counts(model, variables, images[:1], v0, window=4)
    assert counts["act2"][0] == 2                     # both offsets removed
    plain = sc.offset_counts(model, variables, images[:1], None, window=4)
    np.testing.assert_array_equal(plain["act2"], [0, 1, 1, 0, 0, 0])


def test_mean_cos_estimator_by_hand():
    """COS (rho = W = 4, k = 1) moves sample 1's p down to -1/2 (one spike
    too many, m_fire = 1.25) and q up to 3/2 (one too few, m_quiet = 0.25);
    sample 2 has no offsets (1/2 stays). Means: p 0, q 1; per layer 1/2."""
    model, variables, images = float32_hand_network()
    v0 = sc.calibrate_static(model, variables, images, window=4, estimator="mean_cos", chunk=1)
    np.testing.assert_array_equal(v0["act2"], [0.0, 1.0])
    one = sc.calibrate_static(model, variables, images[:1], window=4, estimator="mean_cos")
    np.testing.assert_array_equal(one["act2"], [-0.5, 1.5])
    layer = sc.calibrate_static(model, variables, images, window=4, estimator="mean_cos",
                                granularity="layer")
    assert layer["act2"].shape == () and float(layer["act2"]) == 0.5
    clipped = sc.calibrate_static(model, variables, images, window=4, estimator="mean_cos",
                                  clip_range=(0.0, 1.25))
    np.testing.assert_array_equal(clipped["act2"], [0.25, 0.875])


def test_mean_cos_sentinel_shift():
    """A neuron that fires at every pre-simulation step and ends at v >= 1
    is shifted up by 1.001 + 1000 (the m_quiet sentinel): the plain mean
    keeps it, clip_range bounds it. act1's neuron c of sample 1 gets u = 1
    per step (never quiet, v stays 1/2: no shift); doubling the input
    (u = 2) makes it end at v = 4.5 >= 1."""
    model, variables, images = float32_hand_network()
    doubled = 2 * images[:1]
    v0 = sc.calibrate_static(model, variables, doubled, window=4, estimator="mean_cos")
    assert np.isclose(v0["act1"][2], 0.5 + 1001.001, rtol=1e-6, atol=0)
    clipped = sc.calibrate_static(model, variables, doubled, window=4, estimator="mean_cos",
                                  clip_range=(-0.5, 1.5))
    assert clipped["act1"][2] == 1.5


def test_granularity_shapes_and_batching():
    model, variables, images = two_conv(0, 6)
    shapes = sc.neuron_shapes(model, variables, (4, 4, 2))
    assert shapes == {"act1": (4, 4, 3), "act2": (4, 4, 4)}
    for granularity in sc.GRANULARITIES:
        for estimator in sc.ESTIMATORS:
            v0 = sc.calibrate_static(model, variables, images, window=2, estimator=estimator,
                                     granularity=granularity, chunk=4)
            assert list(v0) == list(shapes)
            for name, shape in shapes.items():
                assert v0[name].shape == sc.granular_shape(shape, granularity), (name, granularity)
        batched = sc.batch_potentials(v0, shapes, 3)
        for name, shape in shapes.items():
            assert batched[name].shape == (3,) + shape
            # Every sample and position holds the layer's (or channel's) value.
            np.testing.assert_array_equal(np.asarray(batched[name]),
                                          np.broadcast_to(v0[name], (3,) + shape))


def test_chunking_does_not_change_the_result():
    """The grid estimator sums integer offsets: chunks of 3 (last one padded)
    and one chunk of all 7 samples give identical potentials."""
    model, variables, images = two_conv(3, 7)
    a = sc.calibrate_static(model, variables, images, window=3, chunk=3)
    b = sc.calibrate_static(model, variables, images, window=3, chunk=7)
    assert np.any(a["act2"] != 0.5)       # not trivially the default
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_offset_counts_agree_with_analysis():
    """With no potentials (v0 = 1/2) the histograms equal those of
    cosjax.analysis (the same offset definition), exactly."""
    model, variables, images = two_conv(2, 5)
    ours = sc.offset_counts(model, variables, images, None, window=4, chunk=2)
    theirs = analysis.analyze_batch(model, variables, jnp.asarray(images), time_steps=4)
    for name, layer in theirs["spiking"].items():
        np.testing.assert_array_equal(ours[name], layer["offsets"])
    assert sum(c[1:].sum() for c in ours.values()) > 0   # the comparison sees offsets


@pytest.fixture(scope="module")
def digits_calibration(trained_digits):
    train_x = digits_data()[0]
    return trained_digits, train_x[:192]


def test_grid_reduces_offsets_on_trained_model(digits_calibration):
    """On the trained digits VGG, W = 4: the grid estimator lowers the share
    of nonzero offsets on its calibration set below plain conversion's
    (v0 = 1/2), and on held-out test images too."""
    m, calib = digits_calibration
    v0 = sc.calibrate_static(m.model, m.variables, calib, window=4, estimator="grid")
    plain = sc.offset_share(sc.offset_counts(m.model, m.variables, calib, None, window=4))
    static = sc.offset_share(sc.offset_counts(m.model, m.variables, calib, v0, window=4))
    assert static < 0.9 * plain, (static, plain)
    test = m.test_images[:192]
    plain_test = sc.offset_share(sc.offset_counts(m.model, m.variables, test, None, window=4))
    static_test = sc.offset_share(sc.offset_counts(m.model, m.variables, test, v0, window=4))
    assert static_test < plain_test, (static_test, plain_test)


def test_layer_order(digits_calibration, monkeypatch):
    """Layer l is calibrated with exactly the static potentials of layers
    0..l-1 (a spy on calibrate_layer), and that matters: calibrating the
    last layer with the earlier ones at 1/2 gives another result."""
    m, calib = digits_calibration
    calls = []
    original = sc.calibrate_layer

    def spy(model, variables, images, name, fixed, **kwargs):
        calls.append((name, {k: np.array(v) for k, v in fixed.items()}))
        return original(model, variables, images, name, fixed, **kwargs)

    monkeypatch.setattr(sc, "calibrate_layer", spy)
    v0 = sc.calibrate_static(m.model, m.variables, calib, window=4)
    monkeypatch.undo()
    names = list(v0)
    assert [name for name, _ in calls] == names and len(names) >= 3
    for i, (_, fixed) in enumerate(calls):
        assert list(fixed) == names[:i]
        for earlier, value in fixed.items():
            np.testing.assert_array_equal(value, v0[earlier])
    last = names[-1]
    again = sc.calibrate_layer(m.model, m.variables, calib, last,
                               {k: v0[k] for k in names[:-1]}, window=4)
    np.testing.assert_array_equal(again, v0[last])
    at_half = sc.calibrate_layer(m.model, m.variables, calib, last, {}, window=4)
    assert not np.array_equal(at_half, v0[last])


def test_save_load_replays_bit_identically(tmp_path):
    model, variables, images = two_conv(4, 4)
    v0 = sc.calibrate_static(model, variables, images, window=3, estimator="mean_cos",
                             granularity="channel")
    assert np.any(v0["act2"] != 0.5)
    path = os.path.join(tmp_path, "v0.npz")
    sc.save_potentials(path, v0, info={"window": 3, "granularity": "channel"})
    assert sorted(os.listdir(tmp_path)) == ["v0.npz"]          # no temporary left behind
    loaded, info = sc.load_potentials(path)
    assert info == {"window": 3, "granularity": "channel"}
    assert list(loaded) == list(v0)
    for name in v0:
        assert loaded[name].dtype == v0[name].dtype
        np.testing.assert_array_equal(loaded[name], v0[name])
    x = jnp.asarray(images)
    a = sc.simulate_static(model, variables, x, v0, time_steps=5)
    b = sc.simulate_static(model, variables, x, loaded, time_steps=5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The static potentials are the ones simulate uses: returned per sample.
    shapes = sc.neuron_shapes(model, variables, (4, 4, 2))
    _, used = simulate(model, variables, x, time_steps=5, return_potentials=True,
                       initial_potentials=sc.batch_potentials(loaded, shapes, 4))
    for name, shape in shapes.items():
        np.testing.assert_array_equal(np.asarray(used[name]),
                                      np.broadcast_to(v0[name], (4,) + shape))


def test_bad_arguments(tmp_path):
    model, variables, images = float32_hand_network()
    run = sc.calibrate_static
    with pytest.raises(ValueError, match="window"):
        run(model, variables, images, window=0)
    with pytest.raises(ValueError, match="estimator"):
        run(model, variables, images, window=2, estimator="median")
    with pytest.raises(ValueError, match="granularity"):
        run(model, variables, images, window=2, granularity="pixel")
    with pytest.raises(ValueError, match="iterations"):
        run(model, variables, images, window=2, estimator="mean_cos", iterations=0)
    with pytest.raises(ValueError, match="clip_range"):
        run(model, variables, images, window=2, estimator="mean_cos", clip_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="clip_range"):
        run(model, variables, images, window=2, estimator="mean_cos", clip_range=0.5)
    with pytest.raises(ValueError, match="chunk"):
        run(model, variables, images, window=2, chunk=0)
    with pytest.raises(ValueError, match="grid"):
        run(model, variables, images, window=2, grid=[0.0, np.nan])
    with pytest.raises(ValueError, match="grid"):
        run(model, variables, images, window=2, grid=[])
    with pytest.raises(ValueError, match="empty"):
        run(model, variables, images[:0], window=2)
    with pytest.raises(ValueError, match="floating"):
        run(model, variables, images.astype(np.int32), window=2)
    with pytest.raises(ValueError, match="unknown spiking layer"):
        sc.calibrate_layer(model, variables, images, "act9", {}, window=2)
    shapes = sc.neuron_shapes(model, variables, images.shape[1:])
    with pytest.raises(ValueError, match="unknown spiking layer"):
        sc.batch_potentials({"act9": np.zeros(3)}, shapes, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        sc.batch_potentials({"act1": np.zeros(2)}, shapes, 2)
    with pytest.raises(ValueError, match="batch"):
        sc.batch_potentials({}, shapes, 0)
    with pytest.raises(ValueError, match="cannot read"):
        sc.load_potentials(os.path.join(tmp_path, "missing.npz"))
    bad = os.path.join(tmp_path, "bad.npz")
    with open(bad, "w") as f:
        f.write("not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        sc.load_potentials(bad)
    with pytest.raises(ValueError, match="reserved"):
        sc.save_potentials(os.path.join(tmp_path, "x.npz"), {sc.INFO_KEY: np.zeros(1)})


@pytest.mark.pipeline
def test_benchmark_tables(capsys):
    """benchmarks/static_compared.py prints COS at latency rho + T."""
    from benchmarks import static_compared as bench

    results = {"time_steps": 6, "presim": 4, "calib_seconds": {"static": 1.5},
               "accuracy": {"plain": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                            "cos_rho4_k1": [0.7, 0.8, 0.9, 0.95, 0.96, 0.97],
                            "static": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]},
               "offset_share": {"static": {"W4": {"calib": 0.01, "test": 0.02}}}}
    bench.print_tables(results, 4)
    out = capsys.readouterr().out
    assert "| static | 1.5 | 20.00 | 30.00 |" in out
    assert "| static | 4 | 1.00 | 2.00 |" in out
    assert "| cos_rho4_k1 | 70.00 | 80.00 |" in out     # L = 5, 6
    assert "| plain | 50.00 | 60.00 |" in out
