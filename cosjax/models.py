"""QCFS VGG and ResNet families (``docs/method.md``), Flax linen, NHWC.

Each architecture is defined once. Its activations are :class:`QCFS` layers;
run as is, the model is the QCFS ANN; run through :func:`cosjax.simulate`,
every QCFS layer becomes a layer of IF neurons and the same module is the SNN.

That works because of a contract every model here keeps (and
:func:`cosjax.check_convertible` verifies for any model): every layer between
spiking layers, and from the last spiking layer to the output, acts on each
example separately, is the same at every time step, and is affine in the
spike train -- convolutions, dense layers, eval-mode batch norm, average
pooling, residual sums, reshapes. The simulation then runs those layers once
on all time steps as one ``[B*S, ...]`` batch. Nonlinearities live in QCFS
only (no max-pooling, no relu, no normalisation over features).

Inputs are ``[B, H, W, 3]`` images (32x32 for CIFAR, 224x224 for ImageNet);
outputs are logits ``[B, num_classes]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cosjax.layers import Conv2d, avg_pool2, batch_norm, flatten, global_avg_pool
from cosjax.qcfs import LAMBDA_INIT, QCFS

__all__ = ["ARCHITECTURES", "BasicBlock", "FastNet", "ResNet", "VGG", "VGG_BLOCKS", "create_model"]

VGG_BLOCKS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    """VGG with conv3x3(bias)+BN+QCFS layers, 2x2 average pooling after each
    block, and a classifier dense 4096 - QCFS - dense 4096 - QCFS - dense.

    Parameter names: ``layer{1..5}/conv{i}``, ``bn{i}``, ``act{i}``;
    ``fc1, act_fc1, fc2, act_fc2, fc3``.
    """

    blocks: Sequence[Sequence[int]]
    num_classes: int = 10
    levels: int = 4
    hidden: int = 4096
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for b, widths in enumerate(self.blocks, start=1):
            for i, width in enumerate(widths):
                x = Conv2d(width, 3, 1, 1, use_bias=True, impl=self.conv_impl,
                           name=f"layer{b}_conv{i}")(x)
                x = batch_norm(train, f"layer{b}_bn{i}")(x)
                x = QCFS(self.levels, name=f"layer{b}_act{i}")(x)
            x = avg_pool2(x)
        x = flatten(x)
        x = nn.Dense(self.hidden, name="fc1")(x)
        x = QCFS(self.levels, name="act_fc1")(x)
        x = nn.Dense(self.hidden, name="fc2")(x)
        x = QCFS(self.levels, name="act_fc2")(x)
        return nn.Dense(self.num_classes, name="fc3")(x)


class BasicBlock(nn.Module):
    """conv3x3(stride)+BN+QCFS, conv3x3+BN, plus a shortcut (identity, or
    conv1x1(stride)+BN when the shape changes), then QCFS after the sum."""

    features: int
    stride: int = 1
    levels: int = 4
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = Conv2d(self.features, 3, self.stride, 1, impl=self.conv_impl, name="conv1")(x)
        y = batch_norm(train, "bn1")(y)
        y = QCFS(self.levels, name="act1")(y)
        y = Conv2d(self.features, 3, 1, 1, impl=self.conv_impl, name="conv2")(y)
        y = batch_norm(train, "bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv2d(self.features, 1, self.stride, 0, impl=self.conv_impl,
                       name="shortcut_conv")(x)
            x = batch_norm(train, "shortcut_bn")(x)
        return QCFS(self.levels, name="act2")(y + x)


class ResNet(nn.Module):
    """ResNet of basic blocks: stem conv3x3 (stride 1) + BN + QCFS, stages of
    blocks (first stride 1, then 2), global average pool, dense.

    Parameter names: ``stem_conv, stem_bn, stem_act``,
    ``stage{s}_block{b}/...`` (see :class:`BasicBlock`), ``fc``.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    num_classes: int = 10
    levels: int = 4
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = Conv2d(self.stage_widths[0], 3, 1, 1, impl=self.conv_impl, name="stem_conv")(x)
        x = batch_norm(train, "stem_bn")(x)
        x = QCFS(self.levels, name="stem_act")(x)
        for s, (size, width) in enumerate(zip(self.stage_sizes, self.stage_widths), start=1):
            for b in range(size):
                stride = 2 if (s > 1 and b == 0) else 1
                x = BasicBlock(width, stride, self.levels, self.conv_impl,
                               name=f"stage{s}_block{b}")(x, train)
        x = global_avg_pool(x)
        return nn.Dense(self.num_classes, name="fc")(x)


class FastNet(nn.Module):
    """A convertible form of airbench's fast CIFAR network (Jordan, 2024).

    ``whiten``: a 2x2 convolution (no padding, bias) whose kernel is meant to
    be set from the training data (:func:`cosjax.whitening.whitening_kernel`);
    then one group per entry of ``widths``, each ``convs_per_group`` 3x3
    convolutions (no bias), the first followed by 2x2 pooling, every one by
    batch norm and an activation; a global pooling; a dense head without
    bias, scaled by ``head_scale``. Input ``[B, 32, 32, 3]`` gives maps of
    31, 15, 7 and 3 pixels a side, output logits ``[B, num_classes]``.
    ``pool_after_activation``: the group's first convolution is followed by
    batch norm and the activation and then the pooling (conv -> BN -> act ->
    pool, the pooling averages activations), instead of conv -> pool -> BN ->
    act (airbench's order).

    ``activation="qcfs"`` with ``pool="avg"`` is the convertible network
    (every activation a :class:`QCFS` layer, average pooling, global
    average pooling); ``"gelu"`` and ``"max"`` give airbench's own
    nonlinearities (max pooling, global max pooling) for comparison, an ANN
    that cannot be converted.

    Parameter names: ``whiten``, ``whiten_act``, ``group{g}_conv{i}``,
    ``group{g}_bn{i}``, ``group{g}_act{i}`` (g, i from 1), ``head``.
    """

    widths: Sequence[int] = (64, 256, 256)
    num_classes: int = 10
    levels: int = 4
    convs_per_group: int = 2
    whiten_size: int = 2
    head_scale: float = 1 / 9
    activation: str = "qcfs"
    pool: str = "avg"
    dirac_init: bool = True
    lam_init: float = LAMBDA_INIT
    bn_momentum: float = 0.4
    bn_epsilon: float = 1e-12
    conv_impl: str = "auto"
    pool_after_activation: bool = False

    def _pool(self, x: jax.Array) -> jax.Array:
        """2x2 pooling, stride 2: ``[B, H, W, C] -> [B, H // 2, W // 2, C]``."""
        return avg_pool2(x) if self.pool == "avg" else nn.max_pool(x, (2, 2), (2, 2))

    def _act(self, name: str) -> Callable[[jax.Array], jax.Array]:
        if self.activation == "qcfs":
            return QCFS(self.levels, self.lam_init, name=name)
        if self.activation == "gelu":
            return functools.partial(nn.gelu, approximate=False)
        raise ValueError(f"FastNet activation must be 'qcfs' or 'gelu', got {self.activation!r}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"FastNet pool must be 'avg' or 'max', got {self.pool!r}")
        k = self.whiten_size
        x = Conv2d(2 * x.shape[-1] * k * k, k, 1, 0, use_bias=True, impl=self.conv_impl,
                   name="whiten")(x)
        x = self._act("whiten_act")(x)
        for g, width in enumerate(self.widths, start=1):
            for i in range(1, self.convs_per_group + 1):
                x = Conv2d(width, 3, 1, 1, impl=self.conv_impl, dirac=self.dirac_init,
                           name=f"group{g}_conv{i}")(x)
                if i == 1 and not self.pool_after_activation:
                    x = self._pool(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=self.bn_epsilon, name=f"group{g}_bn{i}")(x)
                x = self._act(f"group{g}_act{i}")(x)
                if i == 1 and self.pool_after_activation:
                    x = self._pool(x)
        x = global_avg_pool(x) if self.pool == "avg" else jnp.max(x, axis=(1, 2))
        return nn.Dense(self.num_classes, use_bias=False, name="head")(x) * self.head_scale


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    **{name: functools.partial(VGG, blocks) for name, blocks in VGG_BLOCKS.items()},
    "resnet18": lambda **kw: ResNet((2, 2, 2, 2), (64, 128, 256, 512), **kw),
    "resnet20": lambda **kw: ResNet((3, 3, 3), (16, 32, 64), **kw),
    "resnet34": lambda **kw: ResNet((3, 4, 6, 3), (64, 128, 256, 512), **kw),
    "fastnet": FastNet,
}


def create_model(arch: str, num_classes: int, levels: int, **kwargs) -> nn.Module:
    """Builds a QCFS model by name (one of :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of "
                         f"{', '.join(sorted(ARCHITECTURES))}")
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels (L) must be an int >= 1, got {levels!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    return ARCHITECTURES[arch](num_classes=num_classes, levels=levels, **kwargs)
