"""examples/finetune_snn.py: fine-tuning the SNN at T = 1 lowers its loss and
does not lower its accuracy at T = 1."""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "finetune_snn.py"


def _example():
    spec = importlib.util.spec_from_file_location("finetune_snn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.pipeline
def test_finetuning_lowers_the_loss_and_keeps_t1_accuracy(trained_digits):
    example = _example()
    m = trained_digits
    train_x, train_y, _, _ = helpers.digits_data()
    settings = {"time_steps": 1, "presim": 4}
    probe_x, probe_y = jnp.asarray(train_x[:256]), jnp.asarray(train_y[:256])

    def loss(variables):
        return float(example.snn_loss(variables["params"], m.model, variables, probe_x, probe_y,
                                      surrogate=example.surrogates.DEFAULT, **settings))

    before = example.snn_accuracy(m.model, m.variables, m.test_images, m.test_labels, **settings)
    tuned, losses = example.finetune(m.model, m.variables, train_x, train_y, steps=8,
                                     learning_rate=1e-3, **settings)
    after = example.snn_accuracy(m.model, tuned, m.test_images, m.test_labels, **settings)
    assert len(losses) == 8 and np.isfinite(losses).all()
    assert loss(tuned) < loss(m.variables)
    assert after[0] >= before[0], (before, after)
    assert jnp.any(tuned["params"]["layer1_conv0"]["kernel"]
                   != m.variables["params"]["layer1_conv0"]["kernel"])


@pytest.mark.pipeline
@pytest.mark.parametrize("text", ["signed", "srp", "group:3", "parallel"])
def test_every_method_fine_tunes_its_first_layer(text, trained_digits):
    example = _example()
    m = trained_digits
    train_x, train_y, _, _ = helpers.digits_data()
    method = example.parse_method(text)
    presim = 2 if method.name == "srp" else 0
    tuned, losses = example.finetune(m.model, m.variables, train_x[:64], train_y[:64], steps=2,
                                     batch=32, time_steps=2, presim=presim, method=method)
    assert np.isfinite(losses).all()
    assert jnp.any(tuned["params"]["layer1_conv0"]["kernel"]
                   != m.variables["params"]["layer1_conv0"]["kernel"])


@pytest.mark.pipeline
def test_a_bad_method_is_refused_in_one_line(capsys):
    example = _example()
    with pytest.raises(SystemExit) as exit_:
        example.main(["--method", "group:x"])
    assert exit_.value.code == 2
    assert "method" in capsys.readouterr().err
