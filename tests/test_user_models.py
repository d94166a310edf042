"""Converting users' own Flax models (issue 14): what converts approaches its
ANN, what cannot convert is refused, and simulate works inside the user's
transformations."""

import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import cosjax
from cosjax import analysis, correct_per_step, simulate, xla_options
from tests.user_models import BROKEN, MLP, Broken, ConvNet, SharedQCFS, init

CONVERTIBLE = {"mlp": (MLP, (64,), {}), "conv": (ConvNet, (8, 8, 3), {"train": False}),
               "shared": (SharedQCFS, (64,), {})}


def _inputs(shape, batch=8, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch,) + shape, jnp.float32)


def _relative_error(out, ann):
    return float(jnp.linalg.norm(out - ann) / jnp.linalg.norm(ann))


@pytest.mark.parametrize("name", sorted(CONVERTIBLE))
def test_convertible_models_approach_their_ann(name):
    # Over T steps from v0 = 1/2, a layer with constant input fires exactly
    # the count of a QCFS with L = T levels, and the later layers approach
    # that as T grows: the SNN's mean output approaches the same model with
    # QCFS(L = T). (For a trained network that ANN is close to its L = 8
    # one; these models are untrained.)
    make, shape, kwargs = CONVERTIBLE[name]
    model = make()
    variables = init(model, shape, **kwargs)
    x = _inputs(shape)
    cosjax.check_convertible(model, variables, x, **kwargs)
    out = simulate(model, variables, x, time_steps=256, apply_kwargs=kwargs)
    errors = [_relative_error(out[:t].mean(0), make(levels=t).apply(variables, x, **kwargs))
              for t in (16, 256)]
    assert errors[1] < 0.02 and errors[1] < errors[0], errors


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_non_convertible_models_are_refused_naming_the_operation(kind):
    model = Broken(kind)
    variables = init(model, (64,))
    x = _inputs((64,))
    with pytest.raises(ValueError, match=f"`{BROKEN[kind]}` at ") as err:
        simulate(model, variables, x, time_steps=4)
    message = str(err.value)
    assert "check=False" in message
    if kind == "layer_norm":
        assert "module norm" in message and "LayerNorm" in message
    if kind == "analog_skip":
        assert "before the first spiking layer" in message
    why = {"int_cast": "integer or boolean", "bool_cast": "integer or boolean",
           "batch_mix_axis1": "batch axis",
           "random": "random values"}
    if kind in why:
        assert why[kind] in message
    with pytest.raises(ValueError, match=f"`{BROKEN[kind]}` at "):
        cosjax.check_convertible(model, variables, x)


def test_stop_gradient_on_a_spiking_path_is_accepted():
    # Exact in the SNN (the identity on values): converted like the model without it.
    variables = init(Broken("stop_gradient"), (64,))
    x = _inputs((64,))
    cosjax.check_convertible(Broken("stop_gradient"), variables, x)
    np.testing.assert_array_equal(
        np.asarray(simulate(Broken("stop_gradient"), variables, x, time_steps=4, presim=2)),
        np.asarray(simulate(Broken("none"), variables, x, time_steps=4, presim=2)))


@pytest.mark.parametrize("kind", ["max_pool", "relu", "layer_norm", "product"])
def test_what_the_check_refuses_does_not_approach_the_ann(kind):
    # The refusals are not pedantic: without the check these models run and
    # stay far from their ANN (convertible ones reach < 0.02 above).
    variables = init(Broken(kind), (64,))
    x = _inputs((64,))
    out = simulate(Broken(kind), variables, x, time_steps=256, check=False)
    assert _relative_error(out.mean(0), Broken(kind, levels=256).apply(variables, x)) > 0.1


def test_each_call_of_a_shared_qcfs_is_its_own_spiking_layer():
    model = SharedQCFS()
    variables = init(model, (64,))
    x = _inputs((64,))
    out, pots = simulate(model, variables, x, time_steps=4, presim=4, return_potentials=True)
    assert set(pots) == {"act", "act#2"}
    assert pots["act"].shape == pots["act#2"].shape == (8, 24)
    assert not np.array_equal(np.asarray(pots["act"]), np.asarray(pots["act#2"]))
    for given in (pots, {"act#2": pots["act#2"]}):   # replay is exact per call site
        again = simulate(model, variables, x, time_steps=4, presim=4, initial_potentials=given)
        np.testing.assert_array_equal(np.asarray(again), np.asarray(out))
    swapped = simulate(model, variables, x, time_steps=4, presim=4,
                       initial_potentials={"act": pots["act#2"], "act#2": pots["act"]})
    assert not np.array_equal(np.asarray(swapped), np.asarray(out))


@pytest.mark.parametrize("unroll", [True, False])
def test_simulate_inside_jit_vmap_shard_map_and_grad(unroll):
    # On CPU this runs with cosjax's compiler options in force at top level;
    # inside the user's traces simulate must not pass them (jax refuses).
    # unroll=True runs the fused neuron forms on CPU, False the scan forms.
    if jax.default_backend() == "cpu":
        assert xla_options.compiler_options(), "expected the CPU compiler options here"
    model = MLP()
    variables = init(model, (64,))
    x = _inputs((64,), batch=4)
    settings = dict(time_steps=4, presim=2, unroll=unroll)
    ref = simulate(model, variables, x, **settings)

    # Different compiled programs: the dense layers may round differently in
    # float32 (spikes then agree, outputs to ~1e-6 of their size).
    def close(a, b):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)

    close(jax.jit(lambda v, x: simulate(model, v, x, **settings))(variables, x), ref)
    pairs = jax.vmap(lambda x: simulate(model, variables, x, **settings))(x.reshape(2, 2, 64))
    close(jnp.moveaxis(pairs, 0, 1).reshape(ref.shape), ref)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharded = jax.shard_map(lambda v, x: simulate(model, v, x, **settings), mesh=mesh,
                            in_specs=(P(), P("data")), out_specs=P(None, "data"))
    close(sharded(variables, x), ref)

    def loss(params, x):
        out = simulate(model, {"params": params}, x, **settings)
        return -jax.nn.log_softmax(out.mean(0))[:, 0].mean()

    grads, grad_x = jax.grad(loss, argnums=(0, 1))(variables["params"], x)
    for name in ("fc1", "fc2", "fc3"):
        assert float(jnp.abs(grads[name]["kernel"]).max()) > 0, name
    assert float(jnp.abs(grad_x).max()) > 0
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], x)
    leaves = jax.tree_util.tree_leaves
    for a, b in zip(leaves(jitted), leaves((grads, grad_x)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_non_finite_inputs_give_nan_outputs_never_a_class():
    model = MLP()
    variables = init(model, (64,))
    x = _inputs((64,), batch=4)
    bad = x.at[1, 3].set(jnp.nan).at[2, 0].set(jnp.inf)
    clean = simulate(model, variables, x, time_steps=3)
    out = simulate(model, variables, bad, time_steps=3)
    assert np.isnan(np.asarray(out[:, 1:3])).all()
    np.testing.assert_array_equal(np.asarray(out[:, ::3]), np.asarray(clean[:, ::3]))
    # argmax of a NaN row is 0: label every example 0 so a NaN row would count.
    labels = jnp.zeros(4, jnp.int32)
    counted = np.asarray(correct_per_step(out, labels))
    expected = np.asarray(correct_per_step(clean[:, ::3], labels[::3]))
    np.testing.assert_array_equal(counted, expected)
    nan_only = correct_per_step(jnp.full((2, 1, 3), jnp.nan), jnp.zeros(1, jnp.int32))
    np.testing.assert_array_equal(np.asarray(nan_only), [0, 0])


def test_rough_edges_have_clear_errors():
    model = MLP()
    variables = init(model, (64,))
    x = _inputs((64,))
    with pytest.raises(ValueError, match=r"initial_potentials\['act1'\] has shape \(3, 32\)"):
        simulate(model, variables, x, time_steps=2, initial_potentials={"act1": jnp.zeros((3, 32))})
    with pytest.raises(ValueError, match="needs presim"):
        simulate(model, variables, x, time_steps=2, iterations=2)
    with pytest.raises(ValueError, match="hashable"):
        simulate(model, variables, x, time_steps=2, apply_kwargs={"x": [1]})


def test_apply_kwargs_and_vector_inputs_in_analysis():
    model, (shape, kwargs) = ConvNet(), CONVERTIBLE["conv"][1:]
    variables = init(model, shape, **kwargs)
    stats = analysis.analyze_batch(model, variables, _inputs(shape, batch=2), time_steps=2,
                                   apply_kwargs=kwargs)
    assert list(stats["linear"]) == ["conv1", "conv2", "fc"]
    assert stats["linear"]["conv1"]["analog"] and stats["linear"]["fc"]["acs"].sum() > 0
    mlp = MLP()
    stats = analysis.analyze_batch(mlp, init(mlp, (64,)), _inputs((64,), batch=2), time_steps=2)
    assert list(stats["spiking"]) == ["act1", "act2"] and stats["spiking"]["act1"]["neurons"] == 32


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import cosjax
from tests.user_models import MLP, init
assert len(jax.devices()) == 2
model = MLP()
variables = init(model, (64,))
x = jax.random.normal(jax.random.PRNGKey(1), (4, 64), jnp.float32)
mesh = Mesh(np.array(jax.devices()), ("data",))
for unroll in (True, False):
    run = lambda v, x: cosjax.simulate(model, v, x, time_steps=4, presim=2, unroll=unroll)
    ref = run(variables, x)
    f = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=(P(), P("data")),
                              out_specs=P(None, "data")))
    np.testing.assert_allclose(np.asarray(f(variables, x)), np.asarray(ref), rtol=0, atol=1e-5)
    grads = jax.grad(lambda v: f(v, x).mean())(variables)
    assert float(jnp.abs(grads["params"]["fc1"]["kernel"]).max()) > 0
print("ok")
"""


def test_shard_map_over_two_devices():
    # Two host devices need XLA_FLAGS before jax starts: a fresh process.
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", SHARDED], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


# ---------------------------------------------------------------------------
# Every public function takes a model as simulate does.

def test_static_functions_and_the_profile_take_apply_kwargs():
    # ConvNet's __call__(x, train) has no default: model.apply(v, x) alone
    # raises inside the model. Each function passes apply_kwargs through.
    from cosjax import static_calibration as sc

    model, (shape, kwargs) = ConvNet(), CONVERTIBLE["conv"][1:]
    variables = init(model, shape, train=False)
    x = _inputs(shape, batch=6)
    shapes = sc.neuron_shapes(model, variables, shape, kwargs)
    assert shapes == {"act1": (8, 8, 8), "act2": (4, 4, 8)}
    v0 = sc.calibrate_static(model, variables, x, window=4, apply_kwargs=kwargs, chunk=4)
    assert set(v0) == set(shapes)
    out = sc.simulate_static(model, variables, x, v0, time_steps=4, apply_kwargs=kwargs)
    assert out.shape == (4, 6, 10)
    # Static potentials of 1/2 everywhere are plain conversion.
    half = {k: np.full(s, 0.5, np.float32) for k, s in shapes.items()}
    plain = simulate(model, variables, x, time_steps=4, apply_kwargs=kwargs)
    np.testing.assert_array_equal(
        np.asarray(sc.simulate_static(model, variables, x, half, time_steps=4,
                                      apply_kwargs=kwargs)).argmax(-1),
        np.asarray(plain).argmax(-1))
    counts = sc.offset_counts(model, variables, x, v0, window=4, apply_kwargs=kwargs, chunk=4)
    assert {k: int(c.sum()) for k, c in counts.items()} == {
        k: 6 * int(np.prod(s)) for k, s in shapes.items()}
    stats = analysis.analyze_batches(model, variables, [(x, None, None)], time_steps=2,
                                     apply_kwargs=tuple(kwargs.items()))
    assert set(stats["spiking"]) == {"act1", "act2"}


def test_static_calibration_names_a_shared_qcfs_per_call_as_simulate_does():
    # One QCFS module called twice: two spiking layers, "act" and "act#2",
    # each with its own static potential and its own offsets.
    from cosjax import static_calibration as sc

    model = SharedQCFS()
    variables = init(model, (64,))
    x = _inputs((64,), batch=6)
    _, pots = simulate(model, variables, x, time_steps=2, presim=2, return_potentials=True)
    shapes = sc.neuron_shapes(model, variables, (64,))
    assert list(shapes) == list(pots) == ["act", "act#2"]
    v0 = sc.calibrate_static(model, variables, x, window=4, chunk=4)
    assert list(v0) == ["act", "act#2"]
    out = sc.simulate_static(model, variables, x, v0, time_steps=3)
    assert out.shape == (3, 6, 10)
    counts = sc.offset_counts(model, variables, x, v0, window=4, chunk=4)
    assert {k: int(c.sum()) for k, c in counts.items()} == {"act": 6 * 24, "act#2": 6 * 24}


class TwoHeads(nn.Module):
    """A dict output: logits and a second head from an earlier layer."""

    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(8, name="act1")(nn.Dense(32, name="fc1")(x))
        aux = nn.Dense(3, name="aux")(h)
        h = cosjax.QCFS(8, name="act2")(nn.Dense(32, name="fc2")(h))
        return {"logits": nn.Dense(10, name="fc3")(h), "aux": aux}


@pytest.mark.parametrize("micro_batch", [None, 3])
def test_each_output_leaf_is_converted(micro_batch):
    # Each head equals the single-output model's simulation of that head.
    model = TwoHeads()
    variables = init(model, (64,))
    x = _inputs((64,), batch=7)
    out = simulate(model, variables, x, time_steps=4, presim=2, micro_batch=micro_batch)
    assert set(out) == {"logits", "aux"}
    assert out["logits"].shape == (4, 7, 10) and out["aux"].shape == (4, 7, 3)
    for head in ("logits", "aux"):
        class One(TwoHeads):
            def __call__(self, x, head=head):
                return super().__call__(x)[head]
        alone = simulate(One(), variables, x, time_steps=4, presim=2)
        np.testing.assert_allclose(np.asarray(out[head]), np.asarray(alone), rtol=0, atol=1e-5)


def test_mutable_apply_kwargs_are_refused_in_one_line():
    model, shape = ConvNet(), CONVERTIBLE["conv"][1]
    variables = init(model, shape, train=False)
    with pytest.raises(ValueError, match="apply_kwargs has 'mutable'"):
        simulate(model, variables, _inputs(shape), time_steps=2,
                 apply_kwargs={"train": True, "mutable": ("batch_stats",)})
