"""The fast recipe's parts (docs/fast_recipe.md): the convertible FastNet,
whitening filters, dirac init, the optimiser's settings, weight averages,
flip-and-translate augmentation and test-time augmentation; and that the
existing configs' training is unchanged by them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cosjax
from cosjax.layers import dirac_init
from cosjax.models import FastNet
from cosjax.whitening import whitening_kernel

pytestmark = pytest.mark.pipeline


def small_fastnet(**kw):
    return FastNet(widths=(4, 8), convs_per_group=2, **kw)


# --- the network -----------------------------------------------------------

@pytest.mark.parametrize("pool_after_activation", [False, True])
def test_fastnet_converts_and_every_method_runs(pool_after_activation):
    model = small_fastnet(pool_after_activation=pool_after_activation)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    cosjax.check_convertible(model, variables, x)
    for method, presim in ((cosjax.Method("if"), 0), (cosjax.Method("if"), 2),
                           (cosjax.Method("srp"), 2), (cosjax.Method("group", members=2), 0),
                           (cosjax.Method("parallel"), 0), (cosjax.Method("if", signed=True), 0)):
        out = cosjax.simulate(model, variables, x, time_steps=4, presim=presim, method=method)
        assert out.shape[1:] == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
    # At large T the plain SNN's mean output approaches the QCFS ANN's logits.
    out = cosjax.simulate(model, variables, x, time_steps=256)
    np.testing.assert_allclose(out.mean(0), model.apply(variables, x), atol=0.05)


def test_pooling_after_the_activation_averages_the_activations():
    """conv -> BN -> QCFS -> pool: the pooled map is the 2x2 mean of the
    group's first activation (its QCFS layer's output, captured)."""
    model = small_fastnet(pool_after_activation=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    act = state["intermediates"]["group1_act1"]["__call__"][0]            # [2, 15, 15, 4]
    assert act.shape == (2, 15, 15, 4)
    conv2_input = []
    with nn.intercept_methods(lambda f, args, kwargs, ctx: (
            conv2_input.append(args[0]) if ctx.module.name == "group1_conv2" else None,
            f(*args, **kwargs))[1]):
        model.apply(variables, x)
    pooled = act[:, :14, :14].reshape(2, 7, 2, 7, 2, 4).mean((2, 4))
    np.testing.assert_allclose(conv2_input[0], pooled, rtol=1e-6, atol=1e-6)


def test_fastnet_with_gelu_and_max_pooling_is_refused_for_conversion():
    model = small_fastnet(activation="gelu", pool="max")
    x = jnp.ones((1, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="no QCFS"):
        cosjax.simulate(model, variables, x, time_steps=2)


def test_dirac_init_passes_the_first_channels_through():
    kernel = dirac_init(jax.nn.initializers.normal(1.0))(jax.random.PRNGKey(0), (3, 3, 4, 6))
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 5, 4))
    y = cosjax.layers.conv2d(x, kernel, 1, 1)
    np.testing.assert_array_equal(np.asarray(y[..., :4]), np.asarray(x))
    assert float(jnp.abs(kernel[..., 4:]).sum()) > 0        # the rest stays random
    wide = dirac_init(jax.nn.initializers.zeros)(jax.random.PRNGKey(0), (3, 3, 6, 4))
    assert float(wide.sum()) == 4 and float(wide[1, 1, 3, 3]) == 1


# --- whitening -------------------------------------------------------------

def test_whitening_filters_are_the_patch_moment_eigenvectors():
    """On images with correlated channels, the filters are the eigenvectors
    of the 2x2 patches' second moment (computed here patch by patch, in
    float64), in decreasing eigenvalue order, scaled by 1/sqrt(e + eps),
    then their negatives."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(20, 6, 6, 1))
    images = np.concatenate([base, 0.5 * base + 0.1 * rng.normal(size=base.shape),
                             rng.normal(size=base.shape) * 2.0], axis=-1)
    eps = 1e-3
    kernel = whitening_kernel(images, 2, eps).astype(np.float64)
    assert kernel.shape == (2, 2, 3, 24)
    rows = [images[n, i:i + 2, j:j + 2, :].reshape(-1)
            for n in range(20) for i in range(5) for j in range(5)]
    moment = sum(np.outer(r, r) for r in rows) / len(rows)
    filters = kernel.reshape(12, 24)
    values = np.sort(np.linalg.eigvalsh(moment))[::-1]
    for j in range(12):
        f = filters[:, j]
        # an eigenvector of the moment, for the j-th largest eigenvalue ...
        np.testing.assert_allclose(moment @ f, values[j] * f, rtol=1e-4, atol=1e-6)
        # ... scaled to unit length * 1/sqrt(e + eps)
        np.testing.assert_allclose(np.linalg.norm(f), 1 / np.sqrt(values[j] + eps), rtol=1e-5)
    np.testing.assert_array_equal(filters[:, 12:], -filters[:, :12])
    # The whitened patches are decorrelated with second moments e / (e + eps).
    whitened = np.asarray(rows) @ filters[:, :12]
    np.testing.assert_allclose(whitened.T @ whitened / len(rows), np.diag(values / (values + eps)),
                               atol=1e-4)


# --- the optimiser ---------------------------------------------------------

def _config(**optim):
    from configs import default

    config = default.get_config()
    for key, value in optim.items():
        config.optim[key] = value
    return config


def _variables():
    model = small_fastnet()
    return model, model.init(jax.random.PRNGKey(0), jnp.ones((2, 16, 16, 3)))


def test_default_optimiser_is_the_reference_chain_bit_for_bit():
    """Every existing config gets the optimiser it had: weight decay added to
    the gradient, SGD with momentum, cosine decay; the same updates, bit for bit."""
    from train import optimizer

    _, variables = _variables()
    params = variables["params"]
    config = _config()
    ours = optimizer.create(config, params, variables["batch_stats"], 100)
    reference = optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                            optax.sgd(optax.cosine_decay_schedule(config.optim.lr, 100),
                                      momentum=config.optim.momentum))
    states = [ours.init(params), reference.init(params)]
    p = [params, params]
    for step in range(3):
        grads = jax.tree.map(lambda x, s=step: jnp.sin(x + s), params)
        for i, tx in enumerate((ours, reference)):
            updates, states[i] = tx.update(grads, states[i], p[i])
            p[i] = optax.apply_updates(p[i], updates)
    for a, b in zip(jax.tree.leaves(p[0]), jax.tree.leaves(p[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _one_update(config, params, batch_stats, grads, steps=1):
    from train import optimizer

    tx = optimizer.create(config, params, batch_stats, 100)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_learning_rate_multipliers_and_frozen_groups_reach_the_right_parameters():
    from flax import traverse_util

    _, variables = _variables()
    params, stats = variables["params"], variables["batch_stats"]
    grads = jax.tree.map(jnp.ones_like, params)
    base = dict(momentum=0.0, weight_decay=0.0, schedule="triangular")
    plain = _one_update(_config(**base), params, stats, grads)
    multiplied = _one_update(_config(**base, lr_multipliers="bn_bias=64, */lam=2",
                                     frozen=("bn_scale", "whiten/kernel")), params, stats, grads)
    flat = {k: (traverse_util.flatten_dict(params)[k], traverse_util.flatten_dict(plain)[k], v)
            for k, v in traverse_util.flatten_dict(multiplied).items()}
    seen = set()
    for path, (before, one, now) in flat.items():
        step_one, step_now = np.asarray(one - before), np.asarray(now - before)
        if path[0].startswith("group") and "_bn" in path[0]:
            if path[-1] == "bias":
                np.testing.assert_allclose(step_now, 64 * step_one, rtol=1e-6)
                seen.add("bn_bias")
            else:
                assert not step_now.any(), path                      # frozen scale
                seen.add("bn_scale")
        elif path[-1] == "lam":
            np.testing.assert_allclose(step_now, 2 * step_one, rtol=1e-6)
            seen.add("lam")
        elif path == ("whiten", "kernel"):
            assert not step_now.any()
            seen.add("whiten")
        else:
            np.testing.assert_array_equal(step_now, step_one)
            assert step_one.any(), path
    assert seen == {"bn_bias", "bn_scale", "lam", "whiten"}


def test_a_selector_that_matches_nothing_is_refused():
    from train import optimizer
    from train.errors import ConfigError

    _, variables = _variables()
    with pytest.raises(ConfigError, match="'bn_bais' matches no parameter"):
        optimizer.create(_config(lr_multipliers="bn_bais=64"), variables["params"],
                         variables["batch_stats"], 10)
    with pytest.raises(ConfigError, match="GROUP=FACTOR"):
        optimizer.parse_multipliers("bn_bias:64")


def test_decoupled_weight_decay_does_not_scale_with_the_learning_rate():
    """With zero gradients and no momentum, one step shrinks every weight by
    schedule(0) * wd, the same for a group at 64x the learning rate; coupled
    decay shrinks by schedule(0) * lr * factor * wd."""
    _, variables = _variables()
    params, stats = variables["params"], variables["batch_stats"]
    zeros = jax.tree.map(jnp.zeros_like, params)
    for mode, lr in (("decoupled", 0.5), ("decoupled", 2.0), ("coupled", 0.5)):
        config = _config(momentum=0.0, weight_decay=0.01, weight_decay_mode=mode, lr=lr,
                         schedule="triangular", lr_multipliers="bn_bias=64")
        start = 0.2 * lr
        bias = params["group1_bn1"]["bias"] + 1.0
        for name, factor in (("group1_conv1", 1.0), ("group1_bn1", 64.0)):
            leaf = "kernel" if name.endswith("conv1") else "bias"
            before = params[name][leaf] if leaf == "kernel" else bias
            p = {**params, name: {**params[name], leaf: before}}
            after = _one_update(config, p, stats, zeros)[name][leaf]
            shrink = 0.2 * 0.01 if mode == "decoupled" else start * factor * 0.01
            np.testing.assert_allclose(np.asarray(after), np.asarray(before) * (1 - shrink),
                                       rtol=1e-5, err_msg=f"{mode} {name}")


def test_triangular_schedule():
    from train import optimizer

    rate = optimizer.schedule(_config(lr=1.0, schedule="triangular", warmup_fraction=0.2,
                                      initial_lr_fraction=0.2), 100)
    np.testing.assert_allclose([float(rate(t)) for t in (0, 10, 20, 60, 100)],
                               [0.2, 0.6, 1.0, 0.5, 0.0], atol=1e-6)


# --- weight averages -------------------------------------------------------

@pytest.mark.parametrize("mode", ["ema", "lookahead"])
def test_weight_average_arithmetic(mode):
    """The average and the weights after each step, against the recurrence
    written out in float64: a <- d a + (1 - d) w every k steps,
    d = decay * (t / total)^3; lookahead sets w <- a at each update; after
    the last step w = a."""
    from flax.training import train_state

    from train import weight_average

    class State(train_state.TrainState):
        batch_stats: dict
        average: dict = None

    total, every, top = 12, 3, 0.8
    config = _config(average=mode, average_every=every, average_decay=top)
    params = {"w": jnp.asarray(1.0)}
    tx = optax.sgd(1.0)
    state = State.create(apply_fn=None, params=params, batch_stats={"m": jnp.asarray(0.0)}, tx=tx,
                         average=weight_average.initial(config, params, {"m": jnp.asarray(0.0)}))
    w, m, a_w, a_m = 1.0, 0.0, 1.0, 0.0
    for t in range(1, total + 1):
        grad = {"w": jnp.asarray(0.1 * t)}
        state = state.apply_gradients(grads=grad, batch_stats={"m": jnp.asarray(float(t))})
        state = weight_average.update(config, state, total)
        w, m = w - 0.1 * t, float(t)
        if t % every == 0:
            d = top * (t / total) ** 3
            a_w, a_m = d * a_w + (1 - d) * w, d * a_m + (1 - d) * m
            if mode == "lookahead":
                w, m = a_w, a_m
        if t == total:
            w, m = a_w, a_m
        np.testing.assert_allclose(float(state.params["w"]), w, rtol=1e-5, atol=1e-6,
                                   err_msg=f"t={t}")
        np.testing.assert_allclose(float(state.batch_stats["m"]), m, rtol=1e-5)
        np.testing.assert_allclose(float(state.average["params"]["w"]), a_w, rtol=1e-5)
        np.testing.assert_allclose(float(state.average["batch_stats"]["m"]), a_m, rtol=1e-5)


# --- augmentation ----------------------------------------------------------

def test_flip_translate_is_keyed_by_epoch_and_example_and_alternates_flips():
    from train.data import device_augment

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    key = jax.random.PRNGKey(3)
    indices = jnp.arange(8) + 100
    unit = dict(translate=0, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    flips = []
    for epoch in range(4):
        out = np.rint(device_augment.flip_translate(images, key, indices, jnp.full(8, epoch),
                                                    alternating=True, **unit)).astype(np.uint8)
        flipped = [np.array_equal(out[b], images[b, :, ::-1]) for b in range(8)]
        assert all(f or np.array_equal(out[b], images[b]) for b, f in enumerate(flipped))
        flips.append(flipped)
    flips = np.asarray(flips)
    assert (flips[0] != flips[1]).all() and (flips[0] == flips[2]).all() and 0 < flips[0].sum() < 8
    # The translation is a reflect-padded crop with offsets in 0..2t; each
    # example's draw depends on (epoch, index) only, not on its place in the batch.
    shifted = np.rint(device_augment.flip_translate(
        images, key, indices, jnp.zeros(8, jnp.int32), alternating=True,
        **{**unit, "translate": 2})).astype(np.uint8)
    reversed_ = np.rint(device_augment.flip_translate(
        images[::-1], key, indices[::-1], jnp.zeros(8, jnp.int32), alternating=True,
        **{**unit, "translate": 2})).astype(np.uint8)
    np.testing.assert_array_equal(shifted, reversed_[::-1])
    for b in range(8):
        padded = np.pad(images[b], ((2, 2), (2, 2), (0, 0)), mode="reflect")
        crops = [padded[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        crops += [c[:, ::-1] for c in crops]
        assert any(np.array_equal(shifted[b], c) for c in crops), b


# --- test-time augmentation ------------------------------------------------

def test_tta_views_and_weights():
    from train.evaluation import tta

    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    views = tta.views(x, 2)
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    np.testing.assert_array_equal(views[0][1], x)
    np.testing.assert_array_equal(views[1][1], x[:, :, ::-1])
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(views[2][1], padded[:, :4, :4])
    np.testing.assert_array_equal(views[4][1], padded[:, 2:, 2:])
    np.testing.assert_array_equal(views[5][1], padded[:, 2:, 2:][:, :, ::-1])
    assert len(tta.views(x, 1)) == 2 and len(tta.views(x, 0)) == 1


def test_tta_of_the_ann_and_the_snn_averages_each_views_outputs():
    """On a trivial network (dense - QCFS - dense), the TTA evaluation steps
    count what the weighted mean of the separately computed views gives,
    for the ANN and for each step of the SNN (one simulation per view)."""
    import flax.linen as nn

    from train.evaluation import eval_steps, tta

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Dense(16)(x.reshape(x.shape[0], -1))
            x = cosjax.QCFS(4, 2.0)(x)
            return nn.Dense(5)(x)

    model = Tiny()
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 3))
    variables = model.init(jax.random.PRNGKey(1), x)
    labels = jnp.argmax(model.apply(variables, x[:, :, ::-1]), -1)   # the mirror's classes
    mask = jnp.ones(64, bool).at[-3:].set(False)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    views = tta.views(x, 2)

    ann = eval_steps.make_ann_eval_step(model, data, replicated, tta_level=2)
    correct, count = ann(variables, x, labels, mask)
    mean = sum(w * model.apply(variables, v) for w, v in views)
    expected = [int(((jnp.argmax(out, -1) == labels) & mask).sum())
                for out in (model.apply(variables, x), mean)]
    assert [int(c) for c in correct] == expected and int(count) == 61
    assert expected[1] != expected[0]      # the views matter on these labels

    setting = eval_steps.SnnSetting(2, 1)
    snn = eval_steps.make_snn_eval_step(model, setting, 4, data, replicated, tta_level=2)
    correct, _ = snn(variables, x, labels, mask)
    outputs = [cosjax.run_snn(model, variables, v, steps=4, presim=2, iterations=1)[0]
               for _, v in views]
    averaged = sum(w * o for (w, _), o in zip(views, outputs))
    np.testing.assert_array_equal(np.asarray(correct[0]),
                                  np.asarray(cosjax.correct_per_step(outputs[0], labels, mask)))
    np.testing.assert_array_equal(np.asarray(correct[1]),
                                  np.asarray(cosjax.correct_per_step(averaged, labels, mask)))


# --- the pipeline ----------------------------------------------------------

def fast_digits_config(**fields):
    """configs/cifar10_fast.py shrunk to the digits (8x8): two groups of 8
    channels, one epoch; every recipe setting kept on."""
    from configs import cifar10_fast
    from tests.helpers import set_fields

    config = cifar10_fast.get_config()
    config.dataset.name = "digits"
    config.dataset.image_size = 8
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    config.dataset.translate = 1
    config.model.fastnet.widths = (8, 8)
    config.model.fastnet.whiten_examples = 200
    config.model.fastnet.whiten_eps = 0.05     # grey digits: 2/3 of the patch moment is ~0
    config.model.fastnet.bn_epsilon = 1e-5     # 1x1 maps: QCFS makes whole channels constant
    config.optim.lr = 0.2
    config.optim.epochs = 2
    config.optim.batch_size = 64
    config.snn.time_steps = (1, 2)
    config.snn.presim = 2
    config.snn.iterations = (1,)
    config.snn.eval_batch_size = 120
    config.snn.tta = 2
    config.log_every_steps = 10
    config.checkpoint_every_steps = 10
    config.data_threads = 2
    set_fields(config, fields)
    return config


def test_fast_recipe_end_to_end_on_digits_with_tta(tmp_path):
    """The whole recipe runs: whitening from the data (frozen), frozen BN
    scales, Lookahead, flip-and-translate on the device; results carry the
    ANN and every SNN row without and with TTA; a resume from the last
    checkpoint (mode eval) gives the same figures."""
    from tests.helpers import latest_checkpoint
    from train.job import run

    config = fast_digits_config()
    results = run(config, str(tmp_path))
    assert results["tta"] == {"level": 2, "views": 6}
    assert 0 <= results["ann_accuracy_tta"] <= 1
    assert set(results["snn_accuracy_tta"]) == set(results["snn_accuracy"]) == {"plain",
                                                                                 "cos_rho2_k1"}
    table = open(tmp_path / "results.md").read()
    assert "| COS rho=2 k=1 + TTA (6 views) |" in table and "with test-time augmentation" in table
    _, state = latest_checkpoint(tmp_path)
    params = state["params"]
    for name, values in params.items():
        if "_bn" in name:
            np.testing.assert_array_equal(np.asarray(values["scale"]), 1.0)
    # The whitening kernel is the one computed from the first 200 training images.
    from train.data import batching
    from train.data.sources import load_splits

    splits = load_splits(config)
    _, eval_example = batching.transforms(config)
    images = np.stack([eval_example(splits.train[i])["image"] for i in range(200)])
    np.testing.assert_array_equal(np.asarray(params["whiten"]["kernel"]),
                                  whitening_kernel(images, 2, config.model.fastnet.whiten_eps))
    config.mode = "eval"
    again = run(config, str(tmp_path))
    assert again["snn_accuracy_tta"] == results["snn_accuracy_tta"]
    assert again["ann_accuracy_tta"] == results["ann_accuracy_tta"]


def test_gelu_fastnet_is_evaluated_as_an_ann_only(tmp_path):
    from train.job import run

    config = fast_digits_config(**{"model.fastnet.activation": "gelu", "model.fastnet.pool": "max",
                                   "snn.tta": 0, "optim.epochs": 1})
    results = run(config, str(tmp_path))
    assert results["snn_accuracy"] == {} and "cannot be converted" in results["snn_skipped"]
    assert "No SNN rows" in open(tmp_path / "results.md").read()
