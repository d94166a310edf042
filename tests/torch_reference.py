"""PyTorch reference models and a PyTorch reference SNN, for tests only.

Written from docs/method.md (sections 1-3, 5 and 6) with the module structure
and names of the official COS / QCFS code, so that their state dicts have
the official keys:

- VGG: ``layer1..layer5`` are ``Sequential``s of [conv3x3 (bias), BN, QCFS,
  Dropout(0)] per conv, ended by a 2x2 average pool; ``classifier`` is
  [Flatten, Linear, QCFS, Dropout, Linear, QCFS, Dropout, Linear]; the first
  Linear takes ``512*7*7`` features when ``num_classes == 1000`` (ImageNet,
  224x224) and 512 otherwise.
- ResNet: ``conv1`` = [conv, BN, QCFS]; ``conv{2..}_x`` = ``Sequential`` of
  basic blocks with ``residual_function`` = [conv, BN, QCFS, conv, BN],
  ``shortcut`` (empty, or [conv1x1, BN]) and ``relu`` (a QCFS after the sum);
  adaptive average pool; ``fc``.
- QCFS: a module with a threshold parameter ``up`` of shape [1].

The reference SNN (:func:`snn_forward`) replaces every QCFS by a layer of IF
neurons with the offset-spike calibration of section 3, simulated with a
plain Python loop over time on time-batched ``[S*B, ...]`` tensors.
"""

from __future__ import annotations

import torch
from torch import nn

VGG_WIDTHS = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
RESNET_STAGES = {  # (stem width, blocks per stage, stage widths)
    "resnet18": (64, (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet20": (16, (3, 3, 3), (16, 32, 64)),
    "resnet34": (64, (3, 4, 6, 3), (64, 128, 256, 512)),
}


class QCFS(nn.Module):
    """``up * clamp(floor(x / up * L + 1/2) / L, 0, 1)`` with threshold ``up [1]``."""

    def __init__(self, levels: int = 4, up: float = 8.0):
        super().__init__()
        self.levels = levels
        self.up = nn.Parameter(torch.tensor([up]))

    def forward(self, x):
        y = torch.floor(x / self.up * self.levels + 0.5) / self.levels
        return torch.clamp(y, 0, 1) * self.up


class VGG(nn.Module):
    def __init__(self, arch: str, num_classes: int, levels: int = 4,
                 image_size: int | None = None):
        super().__init__()
        channels = 3
        for b, widths in enumerate(VGG_WIDTHS[arch], start=1):
            modules = []
            for width in widths:
                modules += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                            QCFS(levels), nn.Dropout(0.0)]
                channels = width
            modules.append(nn.AvgPool2d(2, 2))
            setattr(self, f"layer{b}", nn.Sequential(*modules))
        if image_size is None:
            features = 512 * 7 * 7 if num_classes == 1000 else 512
        else:
            features = 512 * (image_size // 32) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(features, 4096), QCFS(levels), nn.Dropout(0.0),
            nn.Linear(4096, 4096), QCFS(levels), nn.Dropout(0.0), nn.Linear(4096, num_classes))

    def forward(self, x):
        for b in range(1, 6):
            x = getattr(self, f"layer{b}")(x)
        return self.classifier(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, levels: int):
        super().__init__()
        self.residual_function = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            QCFS(levels), nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.relu = QCFS(levels)

    def forward(self, x):
        return self.relu(self.residual_function(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, arch: str, num_classes: int, levels: int = 4):
        super().__init__()
        stem, sizes, widths = RESNET_STAGES[arch]
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(stem), QCFS(levels))
        channels = stem
        self.stages = len(sizes)
        for s, (size, width) in enumerate(zip(sizes, widths), start=2):
            blocks = []
            for b in range(size):
                blocks.append(BasicBlock(channels, width, 2 if (s > 2 and b == 0) else 1, levels))
                channels = width
            setattr(self, f"conv{s}_x", nn.Sequential(*blocks))
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        for s in range(2, 2 + self.stages):
            x = getattr(self, f"conv{s}_x")(x)
        return self.fc(self.avg_pool(x).flatten(1))


def make_model(arch: str, num_classes: int, levels: int = 4, *,
               dtype: torch.dtype = torch.float32, image_size: int | None = None) -> nn.Module:
    """An official-layout QCFS model in eval mode with *uninitialised* weights
    (built on the meta device, then allocated): fill them with
    :func:`randomize_`. ``image_size`` (VGG only) sets the first dense
    layer's input to ``512 * (image_size // 32)**2`` instead of the official
    rule (``512*7*7`` for 1000 classes, else 512)."""
    with torch.device("meta"):
        if arch.startswith("vgg"):
            model = VGG(arch, num_classes, levels, image_size)
        else:
            model = ResNet(arch, num_classes, levels)
    return model.to(dtype).to_empty(device="cpu").eval()


@torch.no_grad()
def randomize_(model: nn.Module, images: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Fills every parameter and buffer of ``model`` in place, at random.

    Weights ~ N(0, 2/fan_in), biases ~ 0.1 N(0, 1), BN scales ~ U(0.8, 1.2),
    ``num_batches_tracked`` a random count. Without ``images``, running
    means ~ 0.1 N(0, 1), variances ~ U(0.5, 1.5) and thresholds ~ U(0.5, 2).
    With ``images [B, C, H, W]``, BN statistics and thresholds are set from
    the activations those images cause (perturbed at random), layer after
    layer, so that every QCFS layer's outputs spread over its levels.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype

    def rand(shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=dtype)

    def normal(shape):
        return torch.randn(shape, generator=gen, dtype=dtype)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight.shape) * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                module.bias.copy_(0.1 * normal(module.bias.shape))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(rand(module.weight.shape, 0.8, 1.2))
            module.bias.copy_(0.1 * normal(module.bias.shape))
            module.running_mean.copy_(0.1 * normal(module.running_mean.shape))
            module.running_var.copy_(rand(module.running_var.shape, 0.5, 1.5))
            module.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (1,), generator=gen)))
        elif isinstance(module, QCFS):
            module.up.copy_(rand((1,), 0.5, 2.0))
    if images is None:
        return model

    def set_bn_stats(module, args):
        x = args[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-2)
        module.running_mean.copy_(mean + 0.1 * var.sqrt() * normal(mean.shape))
        module.running_var.copy_(var * rand(var.shape, 0.7, 1.3))

    def set_threshold(module, args):
        positive = args[0][args[0] > 0].flatten()[:100000]
        level = float(torch.quantile(positive, 0.9)) if positive.numel() else 1.0
        module.up.fill_(level * float(rand((1,), 0.8, 1.2)))

    hooks = [m.register_forward_pre_hook(set_bn_stats) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
    hooks += [m.register_forward_pre_hook(set_threshold) for m in model.modules()
              if isinstance(m, QCFS)]
    model.eval()
    model(images.to(dtype))
    for hook in hooks:
        hook.remove()
    return model


# ---------------------------------------------------------------------------
# Reference SNN: docs/method.md sections 2 and 3.

class IFLayer(nn.Module):
    """IF neurons with threshold ``up`` and the offset-spike calibration.

    Input ``[B, ...]`` (the first spiking layer: the same input at every step)
    or time-major ``[S*B, ...]``; output ``[S*B, ...]``. Records its spikes
    ``[S, B, ...]`` in ``self.spikes`` and its initial potentials ``[B, ...]``
    in ``self.v0``. ``static_v0`` (threshold units, broadcastable to one
    sample ``[C, H, W]`` / ``[F]``): a fixed initial potential instead of 1/2,
    for presim = 0.
    """

    def __init__(self, threshold: torch.Tensor, batch: int, steps: int, presim: int,
                 static_v0: torch.Tensor | None = None, method: str = "if", members: int = 1,
                 signed: bool = False):
        super().__init__()
        self.threshold = threshold.detach().reshape(())
        self.batch, self.steps, self.presim = batch, steps, presim
        self.static_v0 = static_v0
        self.method, self.members, self.signed = method, members, signed
        self.spikes = self.v0 = None

    def forward(self, x):
        S, B = self.steps, self.batch
        if x.shape[0] == B:
            seq = x.unsqueeze(0).repeat((S,) + (1,) * x.dim())
        else:
            seq = x.reshape((S, B) + tuple(x.shape[1:]))
        if self.method != "if" or self.signed:
            return self.forward_method(x, seq)
        self.v0 = self.calibrate(seq / self.threshold)
        v = self.v0.clone()
        spikes = []
        for t in range(S):
            v = v + seq[t] / self.threshold
            s = (v >= 1.0).to(x.dtype)
            v = v - s
            spikes.append(s)
        self.spikes = torch.stack(spikes)
        return (self.spikes * self.threshold).reshape((S * B,) + tuple(x.shape[1:]))

    def forward_method(self, x, seq):
        """The methods beside IF/COS (docs/method.md), from their rules, in
        threshold units: records ``self.spikes`` (events: member counts for
        groups, -1/0/+1 for signed spikes) and returns ``events * value``."""
        S, B, m = self.steps, self.batch, self.members
        u = seq / self.threshold
        self.v0 = torch.full_like(u[0], 0.5 / m)
        v = self.v0.clone()
        events, values = [], []
        if self.method == "parallel":
            if x.shape[0] == B:
                mean = x / self.threshold          # the same input at every step
            else:
                total = u[0]
                for t in range(1, S):
                    total = total + u[t]
                mean = total / S
            for t in range(1, S + 1):
                ratio = torch.tensor(S, dtype=u.dtype) / t
                offset = torch.tensor(0.5, dtype=u.dtype) / t
                events.append((ratio * mean + offset >= 1.0).to(u.dtype))
            values = events
        elif self.method == "group":
            unit = torch.tensor(1 / m, dtype=u.dtype)
            for t in range(S):
                v = v + u[t]
                n = sum((v >= i * unit).to(u.dtype) for i in range(1, m + 1))
                v = v - n * unit
                events.append(n)
                values.append(n * unit)
        elif self.method == "srp":
            keep = None
            for t in range(S):
                if t == self.presim:           # after the pre-simulation
                    keep = (v > 1e-3).to(u.dtype)
                    v = self.v0.clone()
                v = v + u[t]
                s = (v >= 1.0).to(u.dtype)
                v = v - s
                events.append(s if keep is None else s * keep)
            values = events
        else:                                  # signed IF
            net = torch.zeros_like(v)
            for t in range(S):
                v = v + u[t]
                s = torch.where(v >= 1.0, 1.0, torch.where((v < 0) & (net > 0), -1.0, 0.0))
                s = s.to(u.dtype)
                v = v - s
                net = net + s
                events.append(s)
            values = events
        self.spikes = torch.stack(events)
        out = torch.stack(values) * self.threshold
        return out.reshape((S * B,) + tuple(x.shape[1:]))

    def calibrate(self, u):
        """Initial potentials from a pre-simulation of ``u[:rho]`` (one round)."""
        v0 = torch.full_like(u[0], 0.5)
        if self.static_v0 is not None:
            assert self.presim == 0, "static potentials replace the pre-simulation"
            return self.static_v0.to(u.dtype).expand_as(u[0]).clone()
        if self.presim == 0:
            return v0
        v = v0.clone()
        count = torch.zeros_like(v)
        m_fire = torch.full_like(v, 1000.0)
        m_quiet = torch.full_like(v, -1000.0)
        for t in range(self.presim):
            v = v + u[t]
            fired = v >= 1.0
            m_fire = torch.where(fired, torch.minimum(m_fire, v), m_fire)
            m_quiet = torch.where(fired, m_quiet, torch.maximum(m_quiet, v))
            count = count + fired.to(v.dtype)
            v = v - fired.to(v.dtype)
        lower = (v < 0) & (count > 0)
        higher = v >= 1.0
        one = torch.ones_like(v)
        down = torch.where(m_fire - 0.999 > 1, m_fire - 0.999, one)
        up = torch.where(1.001 - m_quiet > 1, 1.001 - m_quiet, one)
        return torch.where(lower, v0 - down, torch.where(higher, v0 + up, v0))


def _replace_qcfs(module: nn.Module, make, prefix: str = "") -> list[tuple[str, IFLayer]]:
    layers = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, QCFS):
            layer = make(child, full)
            setattr(module, name, layer)
            layers.append((full, layer))
        else:
            layers += _replace_qcfs(child, make, full + ".")
    return layers


@torch.no_grad()
def snn_forward(model: nn.Module, images: torch.Tensor, time_steps: int, presim: int,
                initial_potentials: dict[str, torch.Tensor] | None = None,
                method: str = "if", members: int = 1, signed: bool = False):
    """Runs ``model`` (left unchanged) as the converted SNN.

    Simulates S = max(T, rho) steps (the official code needs T >= rho).

    Args:
      images: ``[B, C, H, W]``, fed at every step (direct coding).
      initial_potentials: optional ``{qcfs module name: v0}`` for every QCFS
        module (static potentials, threshold units, shaped for one sample:
        ``[C, H, W]``, ``[C, 1, 1]``, ``[F]`` or ``[]``); needs presim = 0.
      method, members, signed: the neuron (``"if"``, ``"srp"`` with presim
        as tau: tau + T steps, the last T returned; ``"group"`` with m
        members; ``"parallel"``), as cosjax.Method.
    Returns:
      ``(outputs [T, B, classes], [(qcfs module name, spikes [S, B, ...],
      v0 [B, ...])])`` with layers in the order the forward pass reaches them.
    """
    import copy

    batch = images.shape[0]
    steps = presim + time_steps if method == "srp" else max(time_steps, presim)
    first = presim if method == "srp" else 0
    snn = copy.deepcopy(model).eval()
    if initial_potentials is not None:
        qcfs = {name for name, m in model.named_modules() if isinstance(m, QCFS)}
        assert set(initial_potentials) == qcfs, "one v0 per QCFS module"
    layers = _replace_qcfs(snn, lambda q, name: IFLayer(
        q.up, batch, steps, presim,
        None if initial_potentials is None else initial_potentials[name], method, members,
        signed))
    order = []
    hooks = [layer.register_forward_hook(lambda m, a, o, n=name: order.append((n, m.spikes, m.v0)))
             for name, layer in layers]
    out = snn(images)
    for hook in hooks:
        hook.remove()
    out = out.reshape((steps, batch) + tuple(out.shape[1:]))
    return out[first:first + time_steps], order
