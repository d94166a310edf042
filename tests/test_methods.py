"""The conversion methods of cosjax.methods: hand-computed examples, their
limits, the refusals, and spike-exact agreement with the PyTorch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cosjax
from cosjax import Method, methods, simulate
from cosjax.neuron import if_neuron
from tests.helpers import random_variables, tiny_resnet


def _f64(values):
    return jnp.asarray(np.asarray(values, np.float64).reshape(len(values), -1))


def test_group_neuron_by_hand(x64):
    # m = 2, v0 = 1/4: v = 1.0 -> both members (1/2, 1) fire, v = 0;
    # v = 0.75 -> one, v = 0.25; v = 0.375 -> none.
    counts = methods.group_neuron(_f64([0.75, 0.75, 0.125]), 2)
    np.testing.assert_array_equal(np.asarray(counts).ravel(), [2, 1, 0])


def test_group_neuron_caps_at_m_spikes_per_step(x64):
    counts = methods.group_neuron(_f64([5.0, 0.0, 0.0]), 3)   # v = 1/6 + 5
    np.testing.assert_array_equal(np.asarray(counts).ravel(), [3, 3, 3])


def test_signed_if_neuron_by_hand(x64):
    # v0 = 1/2: 1.25 -> +1 (0.25); -0.25 after a spike -> -1 (0.75); 0.25; 0.5.
    spikes = methods.signed_if_neuron(_f64([0.75, -0.5, -0.5, 0.25]))
    np.testing.assert_array_equal(np.asarray(spikes).ravel(), [1, -1, 0, 0])
    # Without an earlier spike a negative potential sends nothing: -0.5,
    # -1.5, then 1.0 -> +1.
    spikes = methods.signed_if_neuron(_f64([-1.0, -1.0, 2.5]))
    np.testing.assert_array_equal(np.asarray(spikes).ravel(), [0, 0, 1])


def test_srp_neuron_by_hand(x64):
    # tau = 2. Neuron a: input 1/2: spikes at steps 1 and 3, residual 1/2 -> kept.
    # Neuron b: 1, -1/2: residual 0 after pre-simulation -> silent afterwards
    # although it would fire at step 3.
    u = jnp.asarray([[0.5, 1.0], [0.5, -0.5], [0.5, 0.5], [0.5, 0.5]])
    spikes = np.asarray(methods.srp_neuron(u, 2))
    np.testing.assert_array_equal(spikes[:, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(spikes[:, 1], [1, 0, 0, 0])


def test_parallel_neuron_by_hand(x64):
    # T = 4, v0 = 1/2: step t fires iff t <= 4 * mean + 1/2.
    spikes = np.asarray(methods.parallel_neuron(jnp.asarray([0.5, 0.3, 1.2, -0.2]), 4))
    np.testing.assert_array_equal(spikes.T, [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1],
                                             [0, 0, 0, 0]])


def _random_inputs(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(0.4, 0.7, shape).astype(np.float32))


def test_group_of_one_member_is_the_if_neuron_bitwise():
    u = _random_inputs((16, 50), 0)
    spikes, _ = if_neuron(u, 0.5)
    np.testing.assert_array_equal(np.asarray(methods.group_neuron(u, 1)), np.asarray(spikes))


def test_parallel_count_is_qcfs_of_the_mean_with_l_equal_t(x64):
    mean = _random_inputs((400,), 1).astype(jnp.float64)
    for T in (1, 2, 4, 8):
        count = np.asarray(methods.parallel_neuron(mean, T)).sum(0)
        np.testing.assert_array_equal(count, np.clip(np.floor(T * np.asarray(mean) + 0.5), 0, T))


@pytest.fixture(scope="module")
def tiny_net():
    model = tiny_resnet(num_classes=5, levels=4)
    variables = random_variables(model, (8, 8, 3), seed=3)
    images = jnp.asarray(np.random.default_rng(4).normal(size=(6, 8, 8, 3)).astype(np.float32))
    return model, variables, images


def test_group_method_with_one_member_gives_the_if_network_bitwise(tiny_net):
    model, variables, images = tiny_net
    plain = simulate(model, variables, images, time_steps=6)
    group = simulate(model, variables, images, time_steps=6, method=Method("group", members=1))
    np.testing.assert_array_equal(np.asarray(group), np.asarray(plain))


def test_parallel_network_at_t_equal_l_is_the_qcfs_ann(tiny_net, x64):
    # With T = L every parallel layer sends QCFS(mean input) * T spikes; the
    # mean of the outputs over the T steps is the ANN's output, to rounding.
    model, variables, images = tiny_net
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    images = images.astype(jnp.float64)
    ann = model.apply(variables, images)
    out = simulate(model, variables, images, time_steps=4, method="parallel")
    np.testing.assert_allclose(np.asarray(out.mean(0)), np.asarray(ann), rtol=0, atol=1e-9)


def _clip_ann(model, variables, images):
    """The ANN with every QCFS replaced by ``lam * clip(x / lam, 0, 1)``:
    QCFS as L grows, the function a rate code approaches as T grows."""
    import flax.linen as nn

    def clip(next_fun, args, kwargs, context):
        if isinstance(context.module, cosjax.QCFS) and context.method_name == "__call__":
            lam = context.module.get_variable("params", "lam")
            return lam * jnp.clip(args[0] / lam, 0, 1)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(clip):
        return np.asarray(model.apply(variables, images))


# SRP is left out: a neuron it silences after the pre-simulation stays
# silent at every later step, however large T (docs/method.md).
@pytest.mark.parametrize("method", ["if", "group", "parallel", Method("if", signed=True)])
def test_every_method_approaches_the_ann_at_large_t(method, tiny_net, x64):
    model, variables, images = tiny_net
    variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), variables)
    images = images.astype(jnp.float64)
    ann = _clip_ann(model, variables, images)
    def error(T):
        out = simulate(model, variables, images, time_steps=T, method=method)
        return np.abs(np.asarray(out.mean(0)) - ann).max()

    assert error(256) < 0.15 * max(error(2), 1e-3), (error(2), error(256))


def test_srp_returns_the_t_steps_after_its_pre_simulation(tiny_net):
    model, variables, images = tiny_net
    out = simulate(model, variables, images, time_steps=3, presim=2, method="srp")
    assert out.shape == (3, 6, 5)
    spikes = {}
    cosjax.run_snn(model, variables, images, steps=5, presim=2, iterations=1, method="srp",
                   on_layer=lambda name, x, lam, s: spikes.setdefault(name, s))
    full, _ = cosjax.run_snn(model, variables, images, steps=5, presim=2, iterations=1,
                             method="srp")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(full[2:]))


def test_group_method_sends_up_to_m_spikes_per_step(tiny_net):
    model, variables, images = tiny_net
    counts = {}
    cosjax.run_snn(model, variables, images, steps=4, presim=0, iterations=1,
                   method=Method("group", members=3),
                   on_layer=lambda name, x, lam, s: counts.setdefault(name, s))
    values = np.unique(np.concatenate([np.asarray(c).ravel() for c in counts.values()]))
    assert set(values) <= {0, 1, 2, 3} and 3 in values and 2 in values


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="srp", presim=0), "needs presim \\(tau\\) >= 1"),
    (dict(method="group", presim=4), "has no pre-simulation"),
    (dict(method="parallel", presim=2), "has no pre-simulation"),
    (dict(method="parallel", presim=0, iterations=2), "iterations \\(k\\)"),
    (dict(method=Method("if", signed=True), presim=4), "signed IF neurons with COS"),
    (dict(method="lif"), "method must be one of"),
    (dict(method=3), "method must be a name"),
])
def test_method_settings_are_refused_in_one_line(kwargs, message, tiny_net):
    model, variables, images = tiny_net
    with pytest.raises(ValueError, match=message):
        simulate(model, variables, images, time_steps=4, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="srp", members=2), "group method only"),
    (dict(name="group", members=0), "members \\(m\\) must be an int >= 1"),
    (dict(name="srp", signed=True), "option of the IF neuron"),
])
def test_bad_methods_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Method(**kwargs)


@pytest.mark.parametrize("method", ["srp", Method("group", members=3), "parallel",
                                    Method("if", signed=True)])
def test_methods_micro_batched_give_the_whole_batch_results(method, tiny_net):
    model, variables, images = tiny_net
    presim = 2 if method == "srp" else 0
    whole = simulate(model, variables, images, time_steps=4, presim=presim, method=method)
    parts = simulate(model, variables, images, time_steps=4, presim=presim, method=method,
                     micro_batch=4)
    np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=0, atol=1e-5)


def test_labels_and_latency():
    assert [m.label for m in (Method(), Method("if", signed=True), Method("group", members=4),
                              Method("srp"), Method("parallel"))] == [
        "if", "if_signed", "group4", "srp", "parallel"]
    assert Method("srp").latency(4, 4) == 8 and Method("srp").steps(4, 4) == 8
    assert Method().steps(4, 8) == 8 and Method("parallel").latency(4, 0) == 4


# ---------------------------------------------------------------------------
# Spike-exact agreement with the PyTorch reference (tests/torch_reference.py).

torch_reference_cases = [("srp", 1, False, 3, 2), ("group", 3, False, 4, 0),
                         ("parallel", 1, False, 4, 0), ("if", 1, True, 6, 0)]


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
@pytest.mark.parametrize("name,members,signed,T,presim", torch_reference_cases)
def test_method_spikes_match_the_torch_reference(arch, name, members, signed, T, presim, x64):
    torch = pytest.importorskip("torch")
    from cosjax.torch_interop import from_torch_state_dict
    from tests import torch_reference as ref
    from tests.test_torch_interop import LEVELS, nhwc, nhwc_time, reference_model

    tmodel, images = reference_model(arch, 10, 32, torch.float64, seed=2)
    variables = from_torch_state_dict(tmodel.state_dict(), arch, 10)
    expected, layers = ref.snn_forward(tmodel, images, T, presim, method=name, members=members,
                                       signed=signed)
    method = Method(name, members=members, signed=signed)
    model = cosjax.create_model(arch, 10, LEVELS)
    steps = method.steps(T, presim)

    def run(variables, images):
        events = []
        out, _ = cosjax.run_snn(model, variables, images, steps=steps, presim=presim,
                                iterations=1, method=method,
                                on_layer=lambda name, x_raw, lam, s: events.append(s))
        return out, events

    out, events = jax.jit(run)(variables, jnp.asarray(nhwc(images)))
    assert len(events) == len(layers) == (15 if arch == "vgg16" else 19)
    for (layer, t_events, _), s in zip(layers, events):
        np.testing.assert_array_equal(np.asarray(s), nhwc_time(t_events), err_msg=layer)
    first = presim if name == "srp" else 0
    np.testing.assert_allclose(np.asarray(out[first:first + T]), expected.numpy(), rtol=0,
                               atol=1e-9)
    # The method's own events occur: several spikes in one step for groups,
    # spikes taken back for signed neurons.
    values = set(np.unique(np.concatenate([np.asarray(s).ravel() for s in events])))
    if name == "srp":   # the silencing acts: fewer spikes after tau than IF neurons send
        _, plain = ref.snn_forward(tmodel, images, steps, 0)
        assert any(t_events[presim:].sum() < p_events[presim:].sum()
                   for (_, t_events, _), (_, p_events, _) in zip(layers, plain))
    if name == "group":
        assert {2, 3} <= values
    if signed:
        assert -1 in values
