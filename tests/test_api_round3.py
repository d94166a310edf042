"""Issue 36's research-API cases: surrogate gradients of every method, the
edges of the convertibility check, malformed arguments.

The surrogate gradients are checked against central finite differences of a
smoothed reference written here from docs/method.md: each threshold
decision d of the hard run (recorded with its potential p*) is replaced by
``d + sigma((p - 1)/w) - sigma((p* - 1)/w)``, whose value at the hard run's
input is the hard run's and whose derivative is the sigmoid surrogate's;
the discrete gates (a signed neuron's net count, SRP's kept-on neurons) are
frozen at the hard run's values.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cosjax
from cosjax import methods, surrogate
from tests.helpers import random_variables, tiny_vgg

WIDTH = 0.25
SIGMOID = surrogate.sigmoid(WIDTH)


def _smooth(p):
    return 1.0 / (1.0 + np.exp(-(p - 1.0) / WIDTH))


def _decide(fired, p, record, frozen, key):
    """A hard decision (recording its potential), or its smoothed stand-in."""
    if frozen is None:
        record[key] = (fired, p)
        return fired
    fired0, p0 = frozen[key]
    return fired0 + _smooth(p) - _smooth(p0)


def ref_signed(u, v0, frozen=None):
    record, v, net, out = {}, np.full(u.shape[1:], v0), np.zeros(u.shape[1:]), []
    for t in range(u.shape[0]):
        v = v + u[t]
        gate = (net > 0) if frozen is None else frozen[("gate", t)]
        record[("gate", t)] = gate
        up = _decide((v >= 1).astype(float), v, record, frozen, ("up", t))
        down = gate * _decide((v < 0).astype(float), 1 - v, record, frozen, ("down", t))
        s = up - down
        v, net = v - s, net + s
        out.append(s)
    return np.stack(out), record


def ref_group(u, m, frozen=None):
    record, v, out = {}, np.full(u.shape[1:], 0.5 / m), []
    for t in range(u.shape[0]):
        v = v + u[t]
        n = sum(_decide((v >= i / m).astype(float), v - i / m + 1, record, frozen, (i, t))
                for i in range(1, m + 1))
        v = v - n / m
        out.append(n)
    return np.stack(out), record


def ref_srp(u, tau, frozen=None):
    record = {}

    def run(inputs, phase):
        v, out = np.full(u.shape[1:], 0.5), []
        for t in range(inputs.shape[0]):
            v = v + inputs[t]
            s = _decide((v >= 1).astype(float), v, record, frozen, (phase, t))
            v = v - s
            out.append(s)
        return np.stack(out), v

    first, residual = run(u[:tau], 0)
    rest, _ = run(u[tau:], 1)
    on = (residual > methods.SRP_MARGIN) if frozen is None else frozen["on"]
    record["on"] = on
    return np.concatenate([first, rest * on]), record


def ref_parallel(u, frozen=None):
    record, steps = {}, u.shape[0]
    mean = u.mean(axis=0)
    out = [_decide((steps * mean + 0.5 >= t).astype(float), steps * mean + 0.5 - t + 1, record,
                   frozen, t) for t in range(1, steps + 1)]
    return np.stack(out), record


CASES = {   # name: (the method's neuron, its reference (u, frozen) -> (spikes, record))
    "signed": (lambda u: methods.signed_if_neuron(u, 0.5, surrogate=SIGMOID),
               lambda u, frozen: ref_signed(u, 0.5, frozen)),
    "group3": (lambda u: methods.group_neuron(u, 3, surrogate=SIGMOID),
               lambda u, frozen: ref_group(u, 3, frozen)),
    "srp": (lambda u: methods.srp_neuron(u, 2, surrogate=SIGMOID),
            lambda u, frozen: ref_srp(u, 2, frozen)),
    "parallel": (lambda u: methods.parallel_neuron(methods.time_mean(u), u.shape[0],
                                                   surrogate=SIGMOID), ref_parallel),
}


@pytest.mark.parametrize("name", list(CASES))
def test_method_surrogates_equal_finite_differences_of_a_smoothed_reference(name, x64):
    neuron, smoothed = CASES[name]
    rng = np.random.default_rng(7)
    # Inputs around the thresholds, some negative (signed neurons take spikes back).
    u = rng.uniform(-0.6, 1.2, (6, 5))
    weights = rng.normal(size=u.shape)
    spikes, record = smoothed(u, None)                  # the hard run
    np.testing.assert_array_equal(np.asarray(neuron(jnp.asarray(u))), spikes)   # the rule
    grad = np.asarray(jax.grad(lambda u: (neuron(u) * weights).sum())(jnp.asarray(u)))
    np.testing.assert_allclose(smoothed(u, record)[0], spikes, atol=1e-12)   # same point
    eps = 1e-6
    fd = np.zeros_like(u)
    for index in np.ndindex(u.shape):
        step = np.zeros_like(u)
        step[index] = eps
        fd[index] = ((smoothed(u + step, record)[0] * weights).sum()
                     - (smoothed(u - step, record)[0] * weights).sum()) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    assert np.abs(grad).max() > 0.1


METHODS = [cosjax.Method("if", signed=True), cosjax.Method("group", members=3),
           cosjax.Method("srp"), cosjax.Method("parallel")]


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = cosjax.QCFS(levels=4)(nn.Dense(12)(x))
        x = cosjax.QCFS(levels=4)(nn.Dense(12)(x))
        return nn.Dense(3)(x)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.label)
def test_gradients_reach_every_layer_for_every_method(method):
    model = MLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    presim = 2 if method.name == "srp" else 0

    def loss(params, s):
        out = cosjax.simulate(model, {"params": params}, x, time_steps=4, presim=presim,
                              method=method, surrogate=s)
        return (out.mean(0) ** 2).sum()

    grads = jax.grad(loss)(variables["params"], SIGMOID)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
    other = jax.grad(loss)(variables["params"], surrogate.straight_through())
    assert float(jnp.abs(other["Dense_0"]["kernel"] - grads["Dense_0"]["kernel"]).max()) > 0
    # The forward values do not depend on the surrogate.
    a = cosjax.simulate(model, variables, x, time_steps=4, presim=presim, method=method)
    b = cosjax.simulate(model, variables, x, time_steps=4, presim=presim, method=method,
                        surrogate=SIGMOID)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_group_of_one_member_has_the_if_gradient(x64):
    model = tiny_vgg()
    variables = random_variables(model, (8, 8, 3), dtype=jnp.float64)
    images = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3), jnp.float64)

    def loss(params, method):
        out = cosjax.simulate(model, {**variables, "params": params}, images, time_steps=3,
                              method=method, unroll=False)
        return (out.mean(0) ** 2).sum()

    a = jax.grad(loss)(variables["params"], cosjax.Method("if"))
    b = jax.grad(loss)(variables["params"], cosjax.Method("group", members=1))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# Case 3: a non-finite initial potential inside the user's jit.

def test_non_finite_initial_potentials_inside_jit_give_nan_outputs():
    model = MLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    _, pots = cosjax.simulate(model, variables, x, time_steps=3, return_potentials=True)
    bad = dict(pots)
    bad["QCFS_0"] = pots["QCFS_0"].at[1, 0].set(jnp.nan).at[2, 3].set(jnp.inf)
    with pytest.raises(ValueError, match=r"initial_potentials\['QCFS_0'\] holds NaN"):
        cosjax.simulate(model, variables, x, time_steps=3, initial_potentials=bad)

    @jax.jit
    def run(v0):
        out = cosjax.simulate(model, variables, x, time_steps=3, initial_potentials=v0)
        return out, cosjax.correct_per_step(out, jnp.zeros(4, jnp.int32))

    out, correct = run(bad)
    finite = np.isfinite(np.asarray(out)).all(axis=(0, 2))
    np.testing.assert_array_equal(finite, [True, False, False, True])
    assert np.isnan(np.asarray(out)[:, 1:3]).all()
    good, _ = run(pots)
    np.testing.assert_array_equal(np.asarray(out)[:, [0, 3]], np.asarray(good)[:, [0, 3]])
    assert int(correct.max()) <= 2


# ---------------------------------------------------------------------------
# Case 9: an output leaf that depends on no spiking layer.

class AuxHead(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(8)(x))
        return nn.Dense(3)(h), nn.Dense(2)(x)          # the second head reads the input


def test_an_output_leaf_on_the_input_alone_is_repeated_over_time():
    model = AuxHead()
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    main, aux = cosjax.simulate(model, variables, x, time_steps=4)
    assert main.shape == (4, 8, 3) and aux.shape == (4, 8, 2)
    _, ann_aux = model.apply(variables, x)
    np.testing.assert_allclose(np.asarray(aux), np.broadcast_to(np.asarray(ann_aux), (4, 8, 2)),
                               rtol=1e-6)


# ---------------------------------------------------------------------------
# Case 10: malformed initial potentials and labels.

def test_malformed_initial_potentials_and_labels_are_refused_in_one_line():
    model = MLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    _, pots = cosjax.simulate(model, variables, x, time_steps=2, return_potentials=True)
    with pytest.raises(ValueError, match="initial_potentials must be a mapping .* got list"):
        cosjax.simulate(model, variables, x, time_steps=2, initial_potentials=[pots["QCFS_0"]])
    with pytest.raises(ValueError, match=r"initial_potentials\['QCFS_0'\] is not an array"):
        cosjax.simulate(model, variables, x, time_steps=2,
                        initial_potentials={"QCFS_0": [[0.5] * 12, [0.5] * 3]})
    with pytest.raises(ValueError, match=r"initial_potentials\['QCFS_0'\] is not an array"):
        cosjax.simulate(model, variables, x, time_steps=2, initial_potentials={"QCFS_0": object()})
    with pytest.raises(ValueError, match="must hold real numbers"):
        cosjax.simulate(model, variables, x, time_steps=2,
                        initial_potentials={"QCFS_0": jnp.ones((2, 12), jnp.complex64)})
    # Nested Python lists of the right shape are arrays, at top level and in a jit.
    nested = {name: np.asarray(v).tolist() for name, v in pots.items()}
    base = cosjax.simulate(model, variables, x, time_steps=2, initial_potentials=pots)
    for run in (cosjax.simulate, jax.jit(cosjax.simulate, static_argnames=("model", "time_steps"))):
        out = run(model, variables, x, time_steps=2, initial_potentials=nested)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(base))
    out = jnp.zeros((3, 2, 4))
    for labels, message in [(jnp.zeros(3, jnp.int32), r"labels must be integers of shape \[B\]"),
                            (jnp.zeros((2, 1), jnp.int32), "labels must be integers"),
                            (jnp.zeros(2), "labels must be integers")]:
        with pytest.raises(ValueError, match=message):
            cosjax.correct_per_step(out, labels)
    with pytest.raises(ValueError, match=r"outputs must be per-step outputs \[T, B, classes\]"):
        cosjax.correct_per_step(jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match=r"mask must have shape \[B\]"):
        cosjax.correct_per_step(out, jnp.zeros(2, jnp.int32), jnp.ones(3, bool))


# ---------------------------------------------------------------------------
# Cases 7 and 8: gathers and shapes after a spiking layer.

PERMUTATION = np.array([3, 1, 0, 2, 5, 4, 7, 6])


class Permuted(nn.Module):
    over_batch: bool = False
    permute: bool = True

    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(8)(x))
        if self.permute:
            h = h[PERMUTATION[:4]] if self.over_batch else h[:, PERMUTATION]
        return nn.Dense(3)(cosjax.QCFS(levels=4)(nn.Dense(6)(h)))


def test_a_constant_gather_of_features_after_a_spiking_layer_converts(x64):
    # The permuted model is the plain one with the rows of Dense_2 (6 units) permuted.
    model = Permuted()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5), jnp.float64)
    variables = model.init(jax.random.PRNGKey(1), x)
    cosjax.check_convertible(model, variables, x)
    out = cosjax.simulate(model, variables, x, time_steps=8)
    params = dict(variables["params"])
    kernel = params["Dense_2"]["kernel"]
    params["Dense_2"] = {**params["Dense_2"],
                         "kernel": jnp.zeros_like(kernel).at[PERMUTATION].set(kernel)}
    plain = cosjax.simulate(Permuted(permute=False), {"params": params}, x, time_steps=8)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-12, atol=1e-12)
    assert float(jnp.abs(out).max()) > 0


def test_a_gather_over_the_batch_is_refused_naming_the_gather():
    model = Permuted(over_batch=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    with pytest.raises(ValueError, match="`dot_general` at module Dense_2: its batch axis could "
                                         "not be followed past `gather`"):
        cosjax.check_convertible(model, variables, x)


class BatchFromInput(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(8)(x))
        return nn.Dense(3)(h.reshape(x.shape[0], -1))


def test_a_batch_size_read_from_the_input_is_refused_by_the_check():
    model = BatchFromInput()
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    for run in (lambda: cosjax.check_convertible(model, variables, x),
                lambda: cosjax.simulate(model, variables, x, time_steps=2)):
        with pytest.raises(ValueError, match=r"fails when its spiking layers carry time-batched "
                                             r"values .*h.reshape\(x.shape\[0\], -1\)"):
            run()


# ---------------------------------------------------------------------------
# Case 2: analysis of a linear layer whose weight is not named `kernel`.

class OwnLinear(nn.Module):
    features: int
    weight: str = "w"

    @nn.compact
    def __call__(self, h):
        w = self.param(self.weight, nn.initializers.normal(1.0), (h.shape[-1], self.features))
        return jnp.dot(h, w)


class OwnNet(nn.Module):
    weight: str = "w"

    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(8)(x))
        h = cosjax.QCFS(levels=4)(OwnLinear(6, self.weight)(h))
        return nn.Dense(3)(h)


def test_analysis_refuses_by_name_a_linear_layer_it_cannot_count():
    from cosjax import analysis
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    model = OwnNet()
    variables = model.init(jax.random.PRNGKey(1), x)
    with pytest.raises(ValueError, match="cannot count the synaptic operations of module "
                                         "OwnLinear_0: it computes 1 matrix product"):
        analysis.analyze_batch(model, variables, x, time_steps=2)
    # Named `kernel`, the same layer is counted: 8 inputs x 6 outputs per example.
    model = OwnNet(weight="kernel")
    variables = model.init(jax.random.PRNGKey(1), x)
    stats = analysis.summarize(analysis.analyze_batch(model, variables, x, time_steps=2))
    assert stats["synops"]["OwnLinear_0"]["ann_macs"] == 8 * 6
    assert stats["totals"]["ann_macs"] == 5 * 8 + 8 * 6 + 6 * 3
    # No linear layer at all: no energy ratio (not a ZeroDivisionError).
    only = OnlySpikes()
    stats = analysis.summarize(analysis.analyze_batch(only, only.init(jax.random.PRNGKey(1), x),
                                                      x, time_steps=2))
    assert stats["totals"]["ann_macs"] == 0 and stats["totals"]["energy_ratio"] is None


class OnlySpikes(nn.Module):
    @nn.compact
    def __call__(self, x):
        return cosjax.QCFS(levels=4)(x)


# ---------------------------------------------------------------------------
# Case 6: nn.scan over spiking layers: the refusal says what is unsupported.

class ScanBody(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return cosjax.QCFS(levels=4)(nn.Dense(6)(h)), None


class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(6)(x))
        h, _ = nn.scan(ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=2)()(h, None)
        return nn.Dense(3)(h)


def test_a_scan_over_spiking_layers_is_refused_saying_the_loop_is_not_analysed():
    model = Scanned()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5))
    variables = model.init(jax.random.PRNGKey(1), x)
    with pytest.raises(ValueError, match="`scan` at .*does not analyse the body of a loop .*"
                                         "write the layers out"):
        cosjax.check_convertible(model, variables, x)


# ---------------------------------------------------------------------------
# Case 4: nn.vmap inside a model.

class Member(nn.Module):
    mix: bool = False

    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(4)(x))
        return h - h.mean(axis=0) if self.mix else h


class Ensemble(nn.Module):
    mix: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.vmap(Member, in_axes=None, out_axes=1, variable_axes={"params": 0},
                    split_rngs={"params": True}, axis_size=3)(self.mix)(x)   # [B, 3, 4]
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


def test_nn_vmap_inside_a_model_is_checked():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    model = Ensemble()
    variables = model.init(jax.random.PRNGKey(1), x)
    cosjax.check_convertible(model, variables, x)
    out = cosjax.simulate(model, variables, x, time_steps=3)
    unchecked = cosjax.simulate(model, variables, x, time_steps=3, check=False)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(unchecked))
    mixing = Ensemble(mix=True)
    with pytest.raises(ValueError, match="`reduce_sum` at .*combines different examples"):
        cosjax.check_convertible(mixing, mixing.init(jax.random.PRNGKey(1), x), x)


# ---------------------------------------------------------------------------
# Case 5: nn.remat inside a model: the potentials and the hooks' values come
# out of the rematerialised trace (through a Flax collection), bitwise those
# of the same model without remat.

class RematBlock(nn.Module):
    relu: bool = False

    @nn.compact
    def __call__(self, h):
        act = cosjax.QCFS(levels=4, name="act")
        h = act(nn.Dense(6)(h))
        h = nn.Dense(6)(h)
        return act(nn.relu(h) if self.relu else h)   # a second call: "block/act#2"


class RematNet(nn.Module):
    remat: bool = True
    relu: bool = False

    @nn.compact
    def __call__(self, x):
        h = cosjax.QCFS(levels=4)(nn.Dense(6)(x))
        block = nn.remat(RematBlock) if self.remat else RematBlock
        return nn.Dense(3)(block(self.relu, name="block")(h))


def _remat_pair():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    variables = RematNet().init(jax.random.PRNGKey(1), x)
    return RematNet(remat=True), RematNet(remat=False), variables, x


def _assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for p, q in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def test_nn_remat_returns_the_potentials_of_the_model_without_remat():
    remat, plain, variables, x = _remat_pair()
    got = cosjax.simulate(remat, variables, x, time_steps=3, presim=2, return_potentials=True)
    want = cosjax.simulate(plain, variables, x, time_steps=3, presim=2, return_potentials=True)
    assert list(got[1]) == ["QCFS_0", "block/act", "block/act#2"]
    _assert_trees_equal(got, want)


def test_nn_remat_runs_in_the_users_jit_with_hook_records():
    remat, plain, variables, x = _remat_pair()

    @functools.partial(jax.jit, static_argnums=0)
    def run(model, variables, x):
        return cosjax.run_snn(model, variables, x, steps=4, presim=2, iterations=2)

    _assert_trees_equal(run(remat, variables, x), run(plain, variables, x))

    @functools.partial(jax.jit, static_argnums=0)
    def recorded(model, variables, x):
        return cosjax.run_snn(model, variables, x, steps=4, presim=2, iterations=2,
                              on_layer=lambda name, x_raw, lam, spikes: spikes,
                              return_records=True)

    got, want = recorded(remat, variables, x), recorded(plain, variables, x)
    assert list(got[2]) == ["QCFS_0", "block/act", "block/act#2"]   # [S, B, 6] spikes each
    _assert_trees_equal(got, want)


def test_nn_remat_is_analysed_as_the_model_without_remat():
    from cosjax import analysis
    remat, plain, variables, x = _remat_pair()
    labels = jnp.array([0, 1, 2, 0])
    got = analysis.analyze_batch(remat, variables, x, time_steps=3, presim=2, labels=labels)
    want = analysis.analyze_batch(plain, variables, x, time_steps=3, presim=2, labels=labels)
    assert list(got["linear"]) == ["Dense_0", "block/Dense_0", "block/Dense_1", "Dense_1"]
    _assert_trees_equal(got, want)


def test_nn_remat_calibrates_static_potentials_as_the_model_without_remat():
    remat, plain, variables, x = _remat_pair()
    images = np.asarray(x)
    for estimator in ("grid", "mean_cos"):
        got = cosjax.calibrate_static(remat, variables, images, window=3, estimator=estimator,
                                      chunk=3)
        want = cosjax.calibrate_static(plain, variables, images, window=3, estimator=estimator,
                                       chunk=3)
        _assert_trees_equal(got, want)


def test_nn_remat_passes_the_check_and_a_refusal_inside_names_the_block():
    remat, _, variables, x = _remat_pair()
    cosjax.check_convertible(remat, variables, x)
    with pytest.raises(ValueError, match="`max` at module block: max/min is not affine"):
        cosjax.check_convertible(RematNet(relu=True), variables, x)
