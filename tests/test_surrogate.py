"""Surrogate gradients of the spike function: the forward pass never changes,
gradients reach every layer and the input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cosjax import if_neuron, simulate, surrogate
from tests.helpers import random_variables, tiny_vgg

SURROGATES = [surrogate.straight_through(), surrogate.triangle(1.0), surrogate.sigmoid(0.25)]


@pytest.mark.parametrize("s", SURROGATES, ids=lambda s: s.kind)
def test_spike_forward_is_the_threshold_and_derivative_is_the_surrogate(s):
    v = jnp.linspace(-1.0, 3.0, 41)
    np.testing.assert_array_equal(np.asarray(surrogate.spike(v, s)), np.asarray(v >= 1))
    grad = jax.vmap(jax.grad(lambda v: surrogate.spike(v, s)))(v)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(s.derivative(v)), rtol=1e-6)
    assert float(grad[20]) > 0          # v = 1, the threshold


def test_surrogate_shapes():
    tri = surrogate.triangle(0.5)
    np.testing.assert_allclose(np.asarray(tri.derivative(jnp.array([1.0, 1.25, 1.5, 0.4]))),
                               [2.0, 1.0, 0.0, 0.0])
    sig = surrogate.sigmoid(0.25)
    assert float(sig.derivative(jnp.float32(1.0))) == pytest.approx(1.0)   # 1/4 / 0.25
    with pytest.raises(ValueError, match="kind"):
        surrogate.Surrogate("box")
    with pytest.raises(ValueError, match="width"):
        surrogate.triangle(0.0)
    with pytest.raises(ValueError, match="surrogate"):
        simulate(tiny_vgg(), {}, jnp.zeros((1, 8, 8, 3)), time_steps=1, surrogate="triangle")


def test_straight_through_gives_the_rate_derivative():
    # Constant input x over T steps: with reset by subtraction each spike
    # answers to its own step's input, d(count)/dx = T exactly.
    x = jnp.linspace(-0.5, 1.5, 9)

    def count(x):
        spikes, _ = if_neuron(jnp.broadcast_to(x, (6,) + x.shape), 0.5,
                              surrogate=surrogate.straight_through())
        return spikes.sum()

    np.testing.assert_array_equal(np.asarray(jax.grad(count)(x)), np.full(9, 6.0))


@pytest.mark.parametrize("s", SURROGATES, ids=lambda s: s.kind)
def test_forward_unchanged_and_gradients_reach_every_layer(s, x64):
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3), dtype=jnp.float64)
    images = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 3), jnp.float64)
    base = simulate(model, variables, images, time_steps=3, presim=2)
    out = simulate(model, variables, images, time_steps=3, presim=2, surrogate=s)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base))   # same program, same bits

    def loss(params, images, unroll):
        out = simulate(model, {**variables, "params": params}, images, time_steps=3, presim=2,
                       surrogate=s, unroll=unroll)
        return -jax.nn.log_softmax(out.mean(0))[:, 0].mean()

    grads, grad_x = jax.grad(loss, argnums=(0, 1))(variables["params"], images, True)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        if "kernel" in jax.tree_util.keystr(path):
            assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
    assert float(jnp.abs(grads["layer1_conv0"]["kernel"]).max()) > 0   # the first layer
    assert float(jnp.abs(grad_x).max()) > 0
    # The fused forms (CPU) take their derivatives from the scan forms: the
    # same numbers up to the rounding of two differently compiled programs.
    scan = jax.grad(loss, argnums=(0, 1))(variables["params"], images, False)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves((grads, grad_x)), leaves(scan), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_calibrated_potentials_are_held_fixed(x64):
    # Gradients with calibration equal those with the same potentials given
    # as constants: v0 is not differentiated through calibration.
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3), dtype=jnp.float64)
    images = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3), jnp.float64)
    _, pots = simulate(model, variables, images, time_steps=3, presim=3, return_potentials=True)

    def loss(params, given):
        out = simulate(model, {**variables, "params": params}, images, time_steps=3, presim=3,
                       initial_potentials=given)
        return (out.mean(0) ** 2).sum()

    calibrated = jax.grad(loss)(variables["params"], None)
    fixed = jax.grad(loss)(variables["params"], pots)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(calibrated), leaves(fixed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-14)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(calibrated))
