import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cosjax
from cosjax.qcfs import QCFS, qcfs


def test_values_hand_computed():
    # lam = 2, L = 4: steps of 0.5; floor(z/2*4 + 0.5)/4 clipped to [0, 1], times 2.
    z = jnp.array([-3.0, -0.2, 0.2, 0.26, 0.74, 0.76, 1.0, 1.9, 2.0, 5.0], jnp.float32)
    expected = [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 2.0]
    np.testing.assert_array_equal(qcfs(z, 2.0, 4), np.array(expected, np.float32))


def test_straight_through_gradient_wrt_input():
    # d/dz is 1 where floor(.)/L lies in [0, 1] (bounds included), else 0.
    z = jnp.array([-3.0, -0.2, 0.3, 1.0, 1.9, 2.2, 5.0], jnp.float32)
    grad = jax.grad(lambda z: qcfs(z, 2.0, 4).sum())(z)
    # u = floor(z*2 + 0.5)/4: -1.5 ->clip low, -0.25 low? floor(0.1)=0 -> u=0 inside (bound)
    np.testing.assert_array_equal(grad, np.array([0, 1, 1, 1, 1, 1, 0], np.float32))


def test_lambda_gradient(x64):
    # d/dlam = c(u) - c'(u) * z / lam with u the pre-clip level.
    lam = 2.0
    for z, expected in [(0.6, 0.25 - 0.6 / 2.0),  # u = floor(1.7)/4 = 0.25 inside
                        (1.3, 0.75 - 1.3 / 2.0),  # u = floor(3.1)/4 = 0.75 inside
                        (5.0, 1.0),               # clipped above: output = lam
                        (-1.0, 0.0)]:             # clipped below: output = 0
        g = jax.grad(lambda threshold, z=z: qcfs(jnp.float64(z), threshold, 4))(jnp.float64(lam))
        assert float(g) == pytest.approx(expected, abs=1e-12), z


def test_module_has_trainable_lambda_initialised_to_8():
    layer = QCFS(levels=4)
    variables = layer.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
    assert float(variables["params"]["lam"]) == 8.0
    z = jnp.linspace(-2.0, 10.0, 13)
    np.testing.assert_array_equal(layer.apply(variables, z), qcfs(z, 8.0, 4))


def test_float64_dtype_preserved(x64):
    z = jnp.linspace(-1.0, 3.0, 9, dtype=jnp.float64)
    assert qcfs(z, jnp.float64(1.5), 8).dtype == jnp.float64


def test_levels_must_be_positive():
    with pytest.raises(ValueError, match="levels"):
        qcfs(jnp.ones(3), 1.0, 0)


def test_public_names():
    assert cosjax.qcfs is qcfs and cosjax.QCFS is QCFS
