"""Shared test set-up: float64 available everywhere (inputs stay float32 unless a
test asks for float64), and a tiny QCFS network trained on real data."""

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope="session")
def trained_digits():
    """A tiny QCFS VGG trained to convergence on scikit-learn's digits."""
    return helpers.train_digits_model(seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
