"""QCFS activation: quantisation-clip-floor-shift with a trainable threshold.

    qcfs(z) = lam * clip(floor(z / lam * L + 1/2) / L, 0, 1)

The floor has a straight-through (identity) gradient; the clip has its usual
gradient (one on [0, 1], bounds included, zero outside), so ``lam`` receives
a true gradient. The order of operations follows the reference
implementation so that float results agree bit for bit.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["LAMBDA_INIT", "QCFS", "clip_unit", "floor_ste", "qcfs"]

LAMBDA_INIT = 8.0


@jax.custom_jvp
def floor_ste(u: jax.Array) -> jax.Array:
    """``floor(u)`` whose derivative is taken to be one (straight-through)."""
    return jnp.floor(u)


@floor_ste.defjvp
def _floor_ste_jvp(primals, tangents):
    (u,), (du,) = primals, tangents
    return jnp.floor(u), du


def clip_unit(u: jax.Array) -> jax.Array:
    """``clip(u, 0, 1)`` with gradient one on the closed interval [0, 1]."""
    return jnp.where(u < 0, jnp.zeros_like(u), jnp.where(u > 1, jnp.ones_like(u), u))


def qcfs(z: jax.Array, lam: jax.Array, levels: int) -> jax.Array:
    """The QCFS activation (``docs/method.md``).

    Args:
      z: pre-activations, any shape.
      lam: threshold (scalar or broadcastable to ``z``).
      levels: quantisation levels L (an int >= 1).
    Returns:
      An array shaped like ``z`` with values in {0, lam/L, ..., lam}.
    """
    if int(levels) < 1:
        raise ValueError(f"levels (L) must be >= 1, got {levels}")
    lam = jnp.asarray(lam, dtype=z.dtype)
    u = floor_ste(z / lam * levels + 0.5) / levels
    return clip_unit(u) * lam


class QCFS(nn.Module):
    """A QCFS activation layer with one trainable threshold ``lam``.

    In the converted SNN every QCFS layer becomes a layer of IF neurons with
    threshold ``lam`` (see ``cosjax.simulate``): this module is the single
    place where an architecture says "a spiking layer goes here".

    Attributes:
      levels: quantisation levels L.
      lam_init: initial threshold (8.0 in the reference).
    """

    levels: int = 4
    lam_init: float = LAMBDA_INIT

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        lam = self.param("lam", lambda key: jnp.asarray(self.lam_init, jnp.float32))
        return qcfs(z, lam.astype(z.dtype), self.levels)
