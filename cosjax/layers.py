"""Linear building blocks shared by every architecture (NHWC layout)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cosjax import target

__all__ = [
    "CONV_IMPLS", "Conv2d", "MATMUL_MAX_PIXELS", "PER_PLATFORM", "avg_pool2", "batch_norm",
    "conv2d", "dirac_init", "flatten", "global_avg_pool", "resolve_conv_impl"
]

CONV_IMPLS = ("auto", "xla", "matmul")
"""How :func:`conv2d` (and :class:`Conv2d`, every model's ``conv_impl``)
computes a convolution.

``"xla"``: ``lax.conv_general_dilated``. ``"matmul"``: im2col (pad, slice
the kh*kw shifted windows, concatenate them on the channel axis) and one
matmul. ``"auto"`` (the default): ``"matmul"`` in a program for the CPU when
the output feature map has at most :data:`MATMUL_MAX_PIXELS` pixels, else
``"xla"``; GPUs and TPUs always get ``"xla"`` under ``"auto"``. The platform
is the one the program is lowered for (:func:`cosjax.target.on_platform`),
not the host's.

The two forms sum the same products in a different order, so float results
agree to rounding, and exactly whenever the arithmetic is exact (e.g.
integer-valued inputs and weights).
"""

MATMUL_MAX_PIXELS: int = 4
"""Largest output map (H' * W') that ``"auto"`` sends to im2col on CPU.

XLA's CPU convolution is pathologically slow on 2x2 maps and fine from 4x4
on; the measured figures are in docs/performance.md."""


PER_PLATFORM = "per-platform"
"""What :func:`resolve_conv_impl` returns when the form waits for lowering:
``"matmul"`` in a program for the CPU, ``"xla"`` for any other platform."""


def resolve_conv_impl(impl: str, out_pixels: int, backend: str | None = None) -> str:
    """The convolution form for ``impl``: "xla", "matmul", or :data:`PER_PLATFORM`.

    Args:
      impl: "auto", "xla" or "matmul".
      out_pixels: H' * W' of the convolution's output.
      backend: the platform compiled for; default the one set by
        :func:`cosjax.target.use`, else :data:`PER_PLATFORM` where the
        platforms' forms differ (decided when the program is lowered).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl != "auto" or out_pixels > MATMUL_MAX_PIXELS:
        return "xla" if impl == "auto" else impl
    backend = target.forced() if backend is None else backend
    if backend is None:
        return PER_PLATFORM
    return "matmul" if backend == "cpu" else "xla"


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           impl: str = "auto") -> jax.Array:
    """2-D convolution (cross-correlation), NHWC input, HWIO kernel.

    Args:
      x: ``[N, H, W, C_in]``.
      kernel: ``[kh, kw, C_in, C_out]``.
      stride: the same in both spatial dimensions.
      padding: symmetric zero padding of both spatial dimensions.
      impl: "auto", "xla" or "matmul" (see :data:`CONV_IMPLS`).
    Returns:
      ``[N, H', W', C_out]`` with ``H' = (H + 2 padding - kh) // stride + 1``.
    """
    if getattr(x, "ndim", None) != 4 or getattr(kernel, "ndim", None) != 4:
        raise ValueError(f"conv2d needs x [N, H, W, C] and kernel [kh, kw, C_in, C_out], got "
                         f"shapes {getattr(x, 'shape', None)} and {getattr(kernel, 'shape', None)}")
    kh, kw, c_in, c_out = kernel.shape
    n, h, w, c = x.shape
    if c != c_in:
        raise ValueError(f"conv2d: x has {c} channels, the kernel expects {c_in}")
    out_h = (h + 2 * padding - kh) // stride + 1
    out_w = (w + 2 * padding - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv2d: a {kh}x{kw} kernel (stride {stride}, padding {padding}) "
                         f"does not fit a {h}x{w} input")
    def matmul(x, kernel):
        cols = _windows(x, kh, kw, stride, padding, out_h, out_w)
        cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
        return jnp.dot(cols, kernel.reshape(kh * kw * c_in, c_out))

    def xla(x, kernel):
        return _xla_conv(x, kernel, stride, padding)

    form = resolve_conv_impl(impl, out_h * out_w)
    if form == PER_PLATFORM:
        return target.on_platform((x, kernel), cpu=matmul, other=xla)
    return matmul(x, kernel) if form == "matmul" else xla(x, kernel)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=[(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _windows(x: jax.Array, kh: int, kw: int, stride: int, padding: int, out_h: int,
             out_w: int) -> list[jax.Array]:
    """The kh*kw shifted input windows ``[N, H', W', C_in]`` a convolution sums over."""
    n, _, _, c_in = x.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return [lax.slice(xp, (0, i, j, 0),
                      (n, i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, c_in),
                      (1, stride, stride, 1))
            for i in range(kh) for j in range(kw)]


class Conv2d(nn.Module):
    """2-D convolution with explicit symmetric padding, as in PyTorch.

    Parameters: ``kernel [kh, kw, C_in, C_out]`` and ``bias [C_out]`` (if
    ``use_bias``). Input ``[N, H, W, C_in]``, output ``[N, H', W', C_out]``.
    ``impl`` picks the convolution form (see :data:`CONV_IMPLS`). ``dirac``:
    initialise with :func:`dirac_init` (the first ``min(C_in, C_out)``
    filters pass their input channel through unchanged).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = False
    impl: str = "auto"
    dirac: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
        kernel = self.param("kernel", dirac_init(init) if self.dirac else init,
                            (k, k, x.shape[-1], self.features), jnp.float32)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        y = conv2d(x.astype(dtype), kernel.astype(dtype), self.stride, self.padding,
                   self.impl)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(dtype)
        return y


def dirac_init(init: Callable) -> Callable:
    """A kernel initialiser: ``init``'s random kernel ``[kh, kw, C_in, C_out]``
    whose first ``min(C_in, C_out)`` output filters are replaced by identity
    (dirac) filters: filter ``o`` is 1 at the centre tap of input channel
    ``o`` and 0 elsewhere, so at initialisation output channel ``o`` copies
    input channel ``o`` (as PyTorch's ``nn.init.dirac_`` on those filters)."""

    def initializer(key, shape, dtype=jnp.float32):
        kh, kw, c_in, c_out = shape
        kernel = init(key, shape, dtype)
        n = min(c_in, c_out)
        identity = jnp.zeros((kh, kw, c_in, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(c_in, n, dtype=dtype))
        return kernel.at[..., :n].set(identity)

    return initializer


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
