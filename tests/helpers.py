"""Small models, data and an independent float64 NumPy reference for tests.

Needs only the library's dependencies (and scikit-learn for the digits):
the library tests import it with no pipeline package installed.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from cosjax.models import VGG, ResNet


def tiny_vgg(num_classes=10, levels=4):
    return VGG(blocks=((4,), (8, 8)), num_classes=num_classes, levels=levels, hidden=16)


def tiny_resnet(num_classes=10, levels=4):
    return ResNet(stage_sizes=(1, 1), stage_widths=(4, 8), num_classes=num_classes, levels=levels)


def random_variables(model, image_shape, seed=0, dtype=jnp.float32):
    """Initialised variables with non-trivial BN statistics and thresholds."""
    key = jax.random.PRNGKey(seed)
    variables = model.init(key, jnp.zeros((1,) + image_shape, jnp.float32))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "lam" in name:
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
        elif "mean" in name:
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        elif "var" in name:
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        elif "scale" in name:
            leaf = jax.random.uniform(k, leaf.shape, minval=0.8, maxval=1.2)
        elif "bias" in name:
            leaf = 0.1 * jax.random.normal(k, leaf.shape)
        new.append(jnp.asarray(leaf, dtype))
    return jax.tree_util.tree_unflatten(treedef, new)


def to_dtype(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference of docs/method.md sections 2 and 3.

def np_if_neuron(x, v0):
    """Plain Python loop over time: returns (spikes [S, ...], v_final)."""
    v = np.broadcast_to(np.asarray(v0, np.float64), x.shape[1:]).copy()
    spikes = np.zeros_like(x)
    for t in range(x.shape[0]):
        v = v + x[t]
        s = (v >= 1.0).astype(x.dtype)
        spikes[t] = s
        v = v - s
    return spikes, v


def np_calibrate(x, rho, iterations):
    """Pre-simulation, detection and shift of docs/method.md section 3; round
    i > 1 detects on the residual relative to its start (v - (v0 - 1/2))."""
    v0 = np.full(x.shape[1:], 0.5)
    if rho == 0:
        return v0
    for _ in range(iterations):
        v = v0.copy()
        n = np.zeros_like(v)
        m_fire = np.full_like(v, 1000.0)
        m_quiet = np.full_like(v, -1000.0)
        for t in range(rho):
            v = v + x[t]
            for idx in np.ndindex(v.shape):
                if v[idx] >= 1.0:
                    m_fire[idx] = min(m_fire[idx], v[idx])
                    n[idx] += 1
                    v[idx] -= 1.0
                else:
                    m_quiet[idx] = max(m_quiet[idx], v[idx])
        new = v0.copy()
        for idx in np.ndindex(v.shape):
            residual = v[idx] - (v0[idx] - 0.5)   # relative to the start of this round
            if residual < 0 and n[idx] > 0:
                d = m_fire[idx] - 0.999
                new[idx] = v0[idx] - (d if d > 1 else 1.0)
            elif residual >= 1:
                u = 1.001 - m_quiet[idx]
                new[idx] = v0[idx] + (u if u > 1 else 1.0)
        v0 = new
    return v0


# ---------------------------------------------------------------------------
# A tiny network trained to convergence on scikit-learn's bundled digits.

@dataclasses.dataclass
class TrainedModel:
    model: object
    variables: dict
    test_images: np.ndarray
    test_labels: np.ndarray
    ann_accuracy: float


def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    images = images[..., None]  # [N, 8, 8, 1]
    labels = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[perm], labels[perm]
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


class _TrainState(train_state.TrainState):
    batch_stats: dict


def _train_step(model):
    """``(state, images, labels) -> state``: one SGD step on the softmax
    cross-entropy, batch statistics updated (the arithmetic of the
    pipeline's ``train.training_loop.train_step``, written here so that the
    library tests need no pipeline package)."""

    def step(state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                          images, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=batch_stats)

    return step


def train_digits_model(seed=0, steps=600, batch=64, levels=4):
    """Trains a small QCFS VGG with SGD + momentum (cosine lr) on digits."""
    train_x, train_y, test_x, test_y = digits_data()
    model = VGG(blocks=((16,), (32,)), num_classes=10, levels=levels, hidden=64)
    variables = model.init(jax.random.PRNGKey(seed), jnp.asarray(train_x[:1]))
    tx = optax.chain(optax.add_decayed_weights(5e-4),
                     optax.sgd(optax.cosine_decay_schedule(0.05, steps), momentum=0.9))
    state = _TrainState.create(apply_fn=model.apply, params=variables["params"],
                               batch_stats=variables["batch_stats"], tx=tx)
    step = jax.jit(_train_step(model))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(train_y), batch)
        state = step(state, jnp.asarray(train_x[idx]), jnp.asarray(train_y[idx]))
    params, stats = state.params, state.batch_stats
    variables = {"params": params, "batch_stats": stats}
    logits = model.apply(variables, jnp.asarray(test_x))
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == test_y))
    return TrainedModel(model, variables, test_x, test_y, accuracy)


# Tolerances for outputs of linear layers (logits, accumulated outputs,
# potentials computed from summed currents) that come out of two *differently
# compiled* programs: XLA may fuse and order a sum differently in each (and
# differently on another CPU), so such values agree to a few ulps, not
# bitwise. Spikes are 0/1 and compared exactly; one spike moves a later
# output by lam * |w| (>= 1e-3 in the test models), far above these bounds,
# so they still pin every spike.
CROSS_PROGRAM_ATOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def assert_close_across_programs(actual, desired, err_msg: str = "") -> None:
    """Asserts two float arrays from different compiled programs agree to
    rounding (:data:`CROSS_PROGRAM_ATOL` for their dtype)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.dtype == desired.dtype, (actual.dtype, desired.dtype)
    np.testing.assert_allclose(actual, desired, rtol=0,
                               atol=CROSS_PROGRAM_ATOL[actual.dtype], err_msg=err_msg)


def latest_checkpoint(workdir) -> tuple[int, dict]:
    """``(step, state)`` of the newest checkpoint in a pipeline workdir."""
    import orbax.checkpoint as ocp

    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mngr.latest_step()
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, state


def set_fields(config, fields: dict) -> None:
    """Sets dotted config fields: ``{"optim.lr": 0.1}`` -> ``config.optim.lr = 0.1``."""
    for name, value in fields.items():
        node = config
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
