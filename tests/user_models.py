"""Small user-written Flax models, convertible or not, for the conversion tests."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cosjax import QCFS


class MLP(nn.Module):
    """[B, F] vectors: dense - QCFS - dense - QCFS - dense."""

    levels: int = 8

    @nn.compact
    def __call__(self, x):
        x = QCFS(self.levels, name="act1")(nn.Dense(32, name="fc1")(x))
        x = QCFS(self.levels, name="act2")(nn.Dense(32, name="fc2")(x))
        return nn.Dense(10, name="fc3")(x)


class ConvNet(nn.Module):
    """flax.linen.Conv, eval-mode BN, average pooling, eval-mode dropout, a
    residual sum scaled by a constant, a mean over space and a dense layer;
    ``train`` has no default (it must be passed through apply_kwargs)."""

    levels: int = 8

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(8, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
        x = QCFS(self.levels, name="act1")(x)
        x = nn.avg_pool(x, (2, 2), (2, 2))
        y = nn.Conv(8, (3, 3), name="conv2")(x)
        y = nn.Dropout(0.5, deterministic=not train)(y)
        x = QCFS(self.levels, name="act2")(0.5 * (y + x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(10, name="fc")(x)


class SharedQCFS(nn.Module):
    """One QCFS instance called at two places: two spiking layers."""

    levels: int = 8

    @nn.compact
    def __call__(self, x):
        act = QCFS(self.levels, name="act")
        x = act(nn.Dense(24, name="fc1")(x))
        x = act(nn.Dense(24, name="fc2")(x))
        return nn.Dense(10, name="fc3")(x)


class Broken(nn.Module):
    """A model with one operation the SNN cannot carry after its first
    spiking layer (``kind``)."""

    kind: str
    levels: int = 8

    @nn.compact
    def __call__(self, x):
        a = nn.Dense(32, name="fc1")(x)
        h = QCFS(self.levels, name="act1")(a)
        if self.kind == "max_pool":
            h = nn.max_pool(h.reshape(-1, 4, 8, 1), (2, 2), (2, 2)).reshape(h.shape[0], -1)
        elif self.kind == "relu":
            h = nn.relu(nn.Dense(32, name="mid")(h))
        elif self.kind == "layer_norm":
            h = nn.LayerNorm(name="norm")(h)
        elif self.kind == "product":
            h = h * nn.Dense(h.shape[-1], name="gate")(h)
        elif self.kind == "cond":
            h = lax.cond(h[0, 0] > 0, lambda h: h, lambda h: -h, h)
        elif self.kind == "analog_skip":
            h = h + a
        elif self.kind == "int_cast":
            h = h.astype(jnp.int32).astype(h.dtype)
        elif self.kind == "bool_cast":
            h = h.astype(bool).astype(h.dtype)
        elif self.kind == "batch_mix_axis1":   # a sum over the batch, after a transpose
            h = h + h.T.sum(axis=1)
        elif self.kind == "random":            # noise drawn inside the model
            h = h + jax.random.normal(jax.random.PRNGKey(0), h.shape, h.dtype)
        elif self.kind == "stop_gradient":     # exact: not refused
            h = lax.stop_gradient(h)
        h = QCFS(self.levels, name="act2")(nn.Dense(32, name="fc2")(h))
        return nn.Dense(10, name="fc3")(h)


BROKEN = {"max_pool": "reduce_window_max", "relu": "max", "layer_norm": "square",
          "product": "mul", "cond": "gt", "analog_skip": "add",
          "int_cast": "convert_element_type", "bool_cast": "convert_element_type",
          "batch_mix_axis1": "reduce_sum",
          "random": "add"}
"""Each non-convertible case and the primitive the check names."""


def init(model, shape, seed=0, **kwargs):
    """Variables of ``model`` for inputs ``[1, *shape]``, thresholds set to
    1.5 (the init of 8 is far above the pre-activations of these models)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + shape, jnp.float32),
                           **kwargs)
    return jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.full_like(a, 1.5) if "lam" in jax.tree_util.keystr(path) else a,
        variables)
