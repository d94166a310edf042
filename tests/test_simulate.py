import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cosjax
from cosjax import QCFS, correct_per_step, simulate
from cosjax.simulate import _simulate_jit
from tests.helpers import (
    assert_close_across_programs,
    np_calibrate,
    np_if_neuron,
    random_variables,
    tiny_resnet,
    tiny_vgg,
    to_dtype,
)


class TwoLayerNet(nn.Module):
    """image -> dense -> QCFS -> dense -> QCFS -> dense."""

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        x = QCFS(4, name="act1")(nn.Dense(12, name="fc1")(x))
        x = QCFS(4, name="act2")(nn.Dense(9, name="fc2")(x))
        return nn.Dense(3, name="fc3")(x)


def _numpy_two_layer(variables, images, T, rho, k):
    """Independent float64 re-computation of the IF neuron and calibration (docs/method.md)."""
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    S = max(T, rho)
    x = images.reshape(images.shape[0], -1)
    z = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    u = np.broadcast_to(z / p["act1"]["lam"], (S,) + z.shape)
    s1, _ = np_if_neuron(u, np_calibrate(u.reshape(S, -1), rho, k).reshape(z.shape))
    h = s1 * p["act1"]["lam"]
    z2 = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    u2 = z2 / p["act2"]["lam"]
    s2, _ = np_if_neuron(u2, np_calibrate(u2.reshape(S, -1), rho, k).reshape(z2.shape[1:]))
    out = (s2 * p["act2"]["lam"]) @ p["fc3"]["kernel"] + p["fc3"]["bias"]
    return out[:T]


@pytest.mark.parametrize("T,rho,k", [(8, 0, 1), (8, 4, 1), (4, 8, 1), (3, 1, 3), (1, 6, 2)])
def test_simulate_equals_numpy_reference_float64(T, rho, k, x64):
    model = TwoLayerNet()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(5, 2, 2, 3))
    variables = to_dtype(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 3))), jnp.float64)
    variables["params"]["act1"]["lam"] = jnp.float64(0.7)
    variables["params"]["act2"]["lam"] = jnp.float64(1.3)
    out = simulate(model, variables, jnp.asarray(images), time_steps=T, presim=rho, iterations=k)
    assert out.dtype == jnp.float64 and out.shape == (T, 5, 3)
    # NumPy (OpenBLAS) and XLA may sum the dense layers in another order, so
    # outputs agree to rounding; the bound pins every spike (one spike of act2
    # moves an output by lam * |w| >= 1e-3).
    assert_close_across_programs(out, _numpy_two_layer(variables, images, T, rho, k))


@pytest.mark.parametrize("make", [tiny_vgg, tiny_resnet])
def test_batch_independence(make):
    model = make()
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(3), (8, 8, 8, 3))
    batch = simulate(model, variables, images, time_steps=6, presim=4, iterations=2)
    for i in (0, 5):
        alone = simulate(model, variables, images[i:i + 1], time_steps=6, presim=4, iterations=2)
        # A batch of one is another program (other kernels may be chosen):
        # equal to rounding, which still pins every spike.
        assert_close_across_programs(alone[:, 0], batch[:, i])


def test_first_layer_broadcast_equals_time_batched_input():
    # Feeding the first layer's input at every step (no broadcast shortcut)
    # gives the same spikes: simulate a model whose first op is the QCFS.
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 3))
    out, pots = simulate(model, variables, images, time_steps=5, presim=3, return_potentials=True)
    again = simulate(model, variables, images, time_steps=5, presim=3, initial_potentials=pots)
    assert_close_across_programs(again, out)   # calibrating vs replaying: two programs
    assert set(pots) == {"layer1_act0", "layer2_act0", "layer2_act1", "act_fc1", "act_fc2"}
    assert pots["layer1_act0"].shape == (3, 8, 8, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_initial_potentials_are_refused_naming_the_layer(bad):
    # A NaN potential never reaches the threshold: the layer would fall silent.
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 3))
    _, pots = simulate(model, variables, images, time_steps=2, presim=2, return_potentials=True)
    pots = dict(pots, layer2_act1=pots["layer2_act1"].at[1, 0, 0, 0].set(bad))
    with pytest.raises(ValueError, match=r"initial_potentials\['layer2_act1'\] holds NaN or inf"):
        simulate(model, variables, images, time_steps=2, initial_potentials=pots)
    with pytest.raises(ValueError, match="layer2_act1"):
        cosjax.run_snn(model, variables, images, steps=2, presim=0, iterations=1,
                       initial_potentials=pots)
    with pytest.raises(ValueError, match="layer2_act1"):
        cosjax.analysis.analyze_batch(model, variables, images, time_steps=2,
                                      initial_potentials=pots)


def test_presim_zero_means_half_initial_potentials():
    model = tiny_resnet()
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
    out, pots = simulate(model, variables, images, time_steps=4, return_potentials=True)
    for v0 in pots.values():
        np.testing.assert_array_equal(np.asarray(v0), 0.5)
    assert "stage1_block0/act1" in pots


def test_no_recompilation_for_same_shapes():
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    images = jax.random.normal(jax.random.PRNGKey(6), (4, 8, 8, 3))
    simulate(model, variables, images, time_steps=4, presim=2)
    size = _simulate_jit()._cache_size()
    simulate(model, variables, images + 1.0, time_steps=4, presim=2)
    simulate(model, random_variables(model, (8, 8, 3), seed=9), images, time_steps=4, presim=2)
    assert _simulate_jit()._cache_size() == size
    simulate(model, variables, images, time_steps=5, presim=2)
    assert _simulate_jit()._cache_size() == size + 1


def test_qcfs_relation_first_layer_counts():
    """Constant input, T = L steps from v0 = 1/2: spike count = L * qcfs(z) / lam."""
    L, lam = 8, 1.7
    z = np.random.default_rng(7).uniform(-2.0, 4.0, size=(4000,))
    u = jnp.broadcast_to(jnp.asarray(z / lam), (L, z.size))
    spikes, _ = cosjax.if_neuron(u, 0.5)
    expected = L * np.asarray(cosjax.qcfs(jnp.asarray(z), lam, L)) / lam
    np.testing.assert_array_equal(np.asarray(spikes.sum(0)), np.round(expected))
    np.testing.assert_allclose(np.asarray(spikes.sum(0)), expected, atol=1e-12)
    assert (z < 0).any() and (z > lam).any()


def test_float64_whole_path(x64):
    model = tiny_resnet()
    variables = to_dtype(random_variables(model, (8, 8, 3)), jnp.float64)
    images = jnp.asarray(np.random.default_rng(8).normal(size=(2, 8, 8, 3)))
    out, pots = simulate(model, variables, images, time_steps=3, presim=2, return_potentials=True)
    assert out.dtype == jnp.float64
    assert all(v.dtype == jnp.float64 for v in pots.values())


def test_correct_per_step_accumulates_and_masks():
    outputs = jnp.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
                         [[0.0, 3.0], [0.0, 1.0], [0.0, 3.0]]])   # [T=2, B=3, 2]
    labels = jnp.array([1, 1, 1])
    np.testing.assert_array_equal(correct_per_step(outputs, labels), [1, 3])
    mask = jnp.array([True, True, False])
    np.testing.assert_array_equal(correct_per_step(outputs, labels, mask), [1, 2])


@pytest.mark.parametrize("kwargs,match", [
    (dict(time_steps=0), "time_steps"), (dict(time_steps=2, presim=-1), "presim"),
    (dict(time_steps=2, iterations=0), "iterations"), (dict(time_steps=2.0), "time_steps")])
def test_invalid_arguments(kwargs, match):
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    with pytest.raises(ValueError, match=match):
        simulate(model, variables, jnp.zeros((1, 8, 8, 3)), **kwargs)


def test_wrong_image_rank_and_model_without_qcfs():
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3))
    with pytest.raises(ValueError, match="images"):
        simulate(model, variables, jnp.zeros(()), time_steps=2)
    # Any rank is accepted; a conv model fed a rank-3 batch names the shapes.
    with pytest.raises(ValueError, match=r"conv2d needs x \[N, H, W, C\]"):
        simulate(model, variables, jnp.zeros((8, 8, 3)), time_steps=2)
    dense = nn.Dense(3)
    dvars = dense.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="no QCFS layers"):
        simulate(dense, dvars, jnp.zeros((1, 8, 8, 3)), time_steps=2)


def test_trained_network_plain_conversion_converges(trained_digits):
    m = trained_digits
    assert m.ann_accuracy > 0.93
    out = simulate(m.model, m.variables, jnp.asarray(m.test_images), time_steps=64)
    acc = np.asarray(correct_per_step(out, jnp.asarray(m.test_labels))) / len(m.test_labels)
    assert acc[-1] >= m.ann_accuracy - 0.02, (acc[-1], m.ann_accuracy)


def test_trained_network_calibration_helps_at_low_T(trained_digits):
    m = trained_digits
    labels = jnp.asarray(m.test_labels)
    images = jnp.asarray(m.test_images)
    plain = correct_per_step(simulate(m.model, m.variables, images, time_steps=2), labels)
    cos = correct_per_step(simulate(m.model, m.variables, images, time_steps=2, presim=4), labels)
    assert int(cos[0]) > int(plain[0]) and int(cos[1]) > int(plain[1])
