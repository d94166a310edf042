import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosjax import calibrate_v0, if_neuron, presimulate
from tests.helpers import np_calibrate, np_if_neuron

# Every test here compares with the float64 NumPy reference of tests/helpers.py.
pytestmark = pytest.mark.usefixtures("x64")


def test_if_neuron_equals_python_loop(rng):
    x = rng.normal(0.3, 0.7, size=(12, 5, 7))
    v0 = rng.uniform(-1, 2, size=(5, 7))
    spikes, v = if_neuron(jnp.asarray(x), jnp.asarray(v0))
    ref_spikes, ref_v = np_if_neuron(x, v0)
    np.testing.assert_array_equal(np.asarray(spikes), ref_spikes)
    np.testing.assert_array_equal(np.asarray(v), ref_v)
    assert set(np.unique(np.asarray(spikes))) <= {0.0, 1.0}


def test_if_neuron_fires_on_equality_and_resets_by_subtraction():
    x = jnp.array([[0.5], [1.0], [0.25], [0.25]], jnp.float32)
    spikes, v = if_neuron(x, 0.5)
    # v: 1.0 fire -> 0, 1.0 fire -> 0, 0.25, 0.5
    np.testing.assert_array_equal(spikes[:, 0], [1, 1, 0, 0])
    assert float(v[0]) == 0.5


def test_if_neuron_float32_matches_loop(rng):
    x = rng.normal(0.3, 0.7, size=(9, 64)).astype(np.float32)
    spikes, v = if_neuron(jnp.asarray(x))
    ref_spikes, ref_v = np_if_neuron(x, np.float32(0.5))
    np.testing.assert_array_equal(np.asarray(spikes), ref_spikes)


def _cases(rng, steps=10, width=400):
    """Random sequences plus hand-made neurons: silent, always firing, +2 / -2 offsets."""
    x = rng.normal(0.25, 0.6, size=(steps, width))
    x[:, 0] = -0.3                      # never fires
    x[:, 1] = 1.7                       # fires every step, potential climbs
    x[:, 2] = 1.0                       # fires every step exactly
    x[:, 3] = 0.0
    x[0, 3] = 2.6                       # burst then nothing: too many spikes
    x[:, 4] = 0.0
    x[-1, 4] = 2.2                      # late burst: too few spikes early
    x[:, 5] = np.where(np.arange(steps) < 2, 1.6, -0.6)   # +2 offset then negative drive
    x[:, 6] = np.where(np.arange(steps) < 2, -0.6, 1.3)
    return x


@pytest.mark.parametrize("rho", [1, 2, 4, 8, 10])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_calibrate_matches_numpy_reference(rng, rho, iterations):
    x = _cases(rng)
    got = calibrate_v0(jnp.asarray(x), rho, iterations)
    np.testing.assert_array_equal(np.asarray(got), np_calibrate(x, rho, iterations))


def test_calibrate_rho_larger_than_T_through_simulation_window(rng):
    # rho > T is handled by simulating S = max(T, rho); calibrate_v0 only
    # needs x to hold rho steps.
    x = _cases(rng, steps=12)
    got = jax.jit(calibrate_v0, static_argnums=(1, 2))(jnp.asarray(x), 12, 2)
    np.testing.assert_array_equal(np.asarray(got), np_calibrate(x, 12, 2))


def test_calibrate_multidimensional_and_float32(rng):
    x = rng.normal(0.2, 0.8, size=(6, 3, 4, 5)).astype(np.float32)
    got = calibrate_v0(jnp.asarray(x), 4, 1)
    assert got.shape == (3, 4, 5) and got.dtype == jnp.float32
    ref = np_calibrate(x.astype(np.float64).reshape(6, -1), 4, 1).reshape(3, 4, 5)
    # float32 arithmetic: the detection is identical, the shifts agree to rounding
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-5)


def test_rho_zero_is_plain_conversion(rng):
    x = jnp.asarray(rng.normal(size=(4, 10)))
    np.testing.assert_array_equal(calibrate_v0(x, 0, 1), np.full(10, 0.5))


def test_shift_removes_exactly_one_offset_spike(rng):
    rho = 6
    x = rng.normal(0.3, 0.9, size=(rho, 5000))
    stats = presimulate(jnp.asarray(x), 0.5)
    v, n = np.asarray(stats["v"]), np.asarray(stats["n"])
    too_many = (v < 0) & (n > 0)
    too_few = (v >= 1) & (n < rho)
    assert too_many.sum() > 50 and too_few.sum() > 50
    v0 = calibrate_v0(jnp.asarray(x), rho, 1)
    before, _ = np_if_neuron(x, 0.5)
    after, _ = np_if_neuron(x, np.asarray(v0))
    delta = after.sum(0) - before.sum(0)
    np.testing.assert_array_equal(delta[too_many], -1)
    np.testing.assert_array_equal(delta[too_few], 1)
    untouched = ~(too_many | (v >= 1))
    np.testing.assert_array_equal(delta[untouched], 0)


@pytest.mark.parametrize("x,demand,expected", [
    ([1.2, 1.2, 1.2, -2.5], 1, [3, 2, 1, 1]),   # two spikes too many
    ([0.0, 0.0, 1.8, 1.8], 4, [2, 3, 4, 4]),    # two spikes too few
    ([1.6, 1.6, -1.2, -1.2], 1, [2, 1, 1, 1]),  # one too many: later rounds leave it alone
])
def test_iterations_remove_a_double_offset(x, demand, expected):
    x = np.array(x)[:, None]
    assert np.clip(np.floor(x.sum() + 0.5), 0, 4) == demand   # the QCFS count over 4 steps
    counts = [np_if_neuron(x, 0.5)[0].sum()]
    for k in (1, 2, 3):
        v0 = float(calibrate_v0(jnp.asarray(x), 4, k)[0])
        counts.append(np_if_neuron(x, v0)[0].sum())
    assert counts == expected


@pytest.mark.parametrize("rho,k,match", [(-1, 1, "rho"), (2, 0, "iterations"),
                                         (5, 1, "rho=5 exceeds")])
def test_invalid_calibration_arguments(rho, k, match):
    with pytest.raises(ValueError, match=match):
        calibrate_v0(jnp.zeros((4, 3)), rho, k)
