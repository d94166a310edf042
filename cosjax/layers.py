"""Linear building blocks shared by every architecture (NHWC layout)."""

from __future__ import annotations



import jax
import jax.numpy as jnp
import flax.linen as nn
from jax import lax


class Conv2d(nn.Module):
    """2-D convolution with explicit symmetric padding, as in PyTorch.

    Parameters: ``kernel [kh, kw, C_in, C_out]`` and ``bias [C_out]`` (if
    ``use_bias``). Input ``[N, H, W, C_in]``, output ``[N, H', W', C_out]``.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            (k, k, x.shape[-1], self.features), jnp.float32)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        y = lax.conv_general_dilated(
            x.astype(dtype), kernel.astype(dtype),
            window_strides=(self.stride, self.stride),
            padding=[(self.padding, self.padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(dtype)
        return y


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        name=name)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2: ``[N, H, W, C] -> [N, H/2, W/2, C]``."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def global_avg_pool(x: jax.Array) -> jax.Array:
    """``[N, H, W, C] -> [N, C]``."""
    return jnp.mean(x, axis=(1, 2))


def flatten(x: jax.Array) -> jax.Array:
    """``[N, ...] -> [N, prod(...)]`` (row-major over H, W, C)."""
    return x.reshape(x.shape[0], -1)


def check_image_batch(images: jax.Array, name: str = "images") -> None:
    """Raises ``ValueError`` unless ``images`` is ``[B, H, W, C]``."""
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"{name} must have rank 4 [B, H, W, C], got shape "
                         f"{getattr(images, 'shape', None)}")


