"""Shared test set-up: the opt-in float64 fixture and a tiny QCFS network
trained on real data."""

import jax
import numpy as np
import pytest

from tests import helpers


@pytest.fixture
def x64():
    """Enables float64 in JAX for one test (``def test_foo(x64): ...``)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def trained_digits():
    """A tiny QCFS VGG trained to convergence on scikit-learn's digits."""
    return helpers.train_digits_model(seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
