"""Speed and memory benchmark of cosjax: ANN forward, SNN evaluation, training.

Usage::

    python -m benchmarks.speed --arch vgg16 --batch 64 [--image-size 32]
        [--num-classes 10] [--repeats 5] [--torch] [--time-steps 1,2,4,8,16]
        [--presim 0,4] [--iterations 1,2] [--micro-batch none,8] [--skip-train]
        [--methods parallel,srp:4,group:4,signed]
    python -m benchmarks.speed --device-info

Every timed function is jitted, warmed up once (its compile time is reported
separately) and run ``--repeats`` times with ``block_until_ready``; figures
are medians. SNN evaluation and the training step are the pipeline's own
(``train.evaluation.eval_steps.snn_eval_step``, ``train.training_loop.train_step``), compiled here
without shardings.
Ratios are measured within one run: each SNN repeat is interleaved with an
ANN forward repeat, and ``ratio = SNN time / (S x ANN time)`` uses the ANN
median of that interleaved window (shown), so a machine shared with other
jobs moves both numbers together; the ratio of the minima is shown beside it
(the least disturbed repeats; on a busy machine it is the steadier figure).
``S = max(T, rho)`` (tau + T for SRP): the number of simulated steps, the
physical floor being S passes through the linear layers. ``--methods`` adds
rows for the other conversion methods at every T (``parallel``: the parallel
neurons' one-pass layers beside the IF scan of the rho=0 row, on the same
weights).

Memory: ``xla MiB`` is the compiled step's buffer footprint from
``Compiled.memory_analysis()`` (arguments + outputs + temporaries, a static
figure, available on every backend); ``peak MiB`` is the process RSS
high-water mark (``resource.getrusage``; CPU) or the device's
``peak_bytes_in_use`` (accelerators). Both peaks only grow during a run.

With ``--torch`` (PyTorch importable), the same architecture is built as a
plain PyTorch model (NCHW, ``torch.set_num_threads`` = core count; ReLU, or
with ``--torch-activation qcfs`` the same QCFS activation) and its forward
pass and training step are timed in turns with the JAX ones as a yardstick.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.timing import (
    compile_timed,
    cores,
    device_info,
    interleaved_times,
    peak_mib,
    xla_flops,
    xla_mib,
)
from cosjax import layers, xla_options
from cosjax.models import ARCHITECTURES, VGG, FastNet, ResNet, create_model
from train.evaluation.eval_steps import METHOD_SPECS, SnnSetting, method_setting, snn_eval_step
from train.training_loop import TrainState, train_step

# ---------------------------------------------------------------------------
# Command line.

def _int_list(low: int) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < low:
            raise argparse.ArgumentTypeError(f"expected integers >= {low}, got {text!r}")
        return values
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _micro_batches(text: str) -> list[int | None]:
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "0", ""):
            out.append(None)
        else:
            out.append(_positive(part))
    return out


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed",
        description="Times the QCFS ANN forward pass, SNN evaluation (with and without COS "
                    "calibration) and a training step; optionally a PyTorch yardstick.")
    parser.add_argument("--arch", default="vgg16", choices=sorted(ARCHITECTURES))
    parser.add_argument("--batch", type=_positive, default=64)
    parser.add_argument("--image-size", type=_positive, default=32)
    parser.add_argument("--num-classes", type=_positive, default=10)
    parser.add_argument("--levels", type=_positive, default=4, help="QCFS levels L")
    parser.add_argument("--widths", type=_int_list(1), default=None,
                        help="fastnet only: the conv groups' widths, e.g. 64,128,128 "
                             "(default FastNet's 64,256,256)")
    parser.add_argument("--repeats", type=_positive, default=5)
    parser.add_argument("--time-steps", type=_int_list(1), default=[1, 2, 4, 8, 16],
                        help="comma-separated T values (default 1,2,4,8,16)")
    parser.add_argument("--presim", type=_int_list(0), default=[0, 4],
                        help="comma-separated rho values (default 0,4)")
    parser.add_argument("--iterations", type=_int_list(1), default=[1, 2],
                        help="calibration rounds k, used where rho > 0 (default 1,2)")
    parser.add_argument("--methods", type=_methods, default=[],
                        help=f"more conversion methods, comma-separated ({METHOD_SPECS}), each "
                             "timed at every T: e.g. parallel,srp:4,group:4")
    parser.add_argument("--micro-batch", type=_micro_batches, default=[None],
                        help="comma-separated SNN micro-batch sizes; 'none' = whole batch")
    parser.add_argument("--conv-impl", choices=layers.CONV_IMPLS, default="auto",
                        help="the model's conv_impl (see cosjax.layers.CONV_IMPLS; "
                             "default %(default)s)")
    parser.add_argument("--scan-neuron", action="store_true",
                        help="run IF neurons with lax.scan instead of the unrolled kernels "
                             "(run_snn(..., unroll=False); for comparison)")
    parser.add_argument("--plain-jit", action="store_true",
                        help="compile with jax.jit's default options instead of "
                             "cosjax.xla_options.compiler_options() (for comparison)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile every step and report compile time and compiled "
                             "memory, without running it (e.g. ImageNet-size memory)")
    parser.add_argument("--skip-ann", action="store_true", help="no ANN forward row")
    parser.add_argument("--skip-snn", action="store_true", help="no SNN rows")
    parser.add_argument("--skip-train", action="store_true", help="no training-step row")
    parser.add_argument("--torch", action="store_true",
                        help="also time a plain PyTorch model of the same layout")
    parser.add_argument("--torch-activation", choices=("relu", "qcfs"), default="relu",
                        help="activation of the PyTorch yardstick (default relu; qcfs: the "
                             "same QCFS with a trainable threshold and straight-through floor)")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="run the PyTorch yardstick in channels_last memory format")
    parser.add_argument("--device-info", action="store_true",
                        help="print the JAX devices and versions, then exit")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.device_info:
        return args
    if args.widths is not None and args.arch != "fastnet":
        parser.error("--widths is a fastnet setting: add --arch fastnet")
    minimum = _min_image_size(_model(args))
    if args.image_size < minimum or args.image_size % minimum:
        parser.error(f"--image-size must be a multiple of {minimum} for {args.arch} "
                     f"(its poolings and strides), got {args.image_size}")
    if args.compile_only and args.torch:
        parser.error("--compile-only times nothing: drop --torch")
    if args.torch and importlib.util.find_spec("torch") is None:
        parser.error("--torch needs PyTorch (pip install 'cosjax[torch]')")
    return args


def _model(args: argparse.Namespace):
    options = {} if args.widths is None else {"widths": tuple(args.widths)}
    return create_model(args.arch, args.num_classes, args.levels, conv_impl=args.conv_impl,
                        **options)


def _min_image_size(model) -> int:
    if isinstance(model, VGG):
        return 2 ** len(model.blocks)
    if isinstance(model, ResNet):
        return 2 ** (len(model.stage_sizes) - 1)
    return 1


@dataclasses.dataclass
class Row:
    """One line of the results table."""

    what: str
    seconds: float
    images: int                   # images processed per call
    compile_s: float = float("nan")
    steps: int | None = None      # S for SNN rows
    ann_seconds: float | None = None
    xla_mib: float = float("nan")
    peak_mib: float = float("nan")
    note: str = ""
    min_ratio: float | None = None   # min SNN time / (S x min ANN time)

    @property
    def ratio(self) -> float | None:
        if self.steps is None or not self.ann_seconds:
            return None
        return self.seconds / (self.steps * self.ann_seconds)


def format_table(rows: Sequence[Row]) -> str:
    head = ("| what | time (ms) | images/s | S | ANN in window (ms) | SNN / (S x ANN) "
            "| same, of minima | compile (s) | xla MiB | peak MiB | note |")
    lines = [head, "|" + "---|" * 11]

    def number(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
        return "" if value is None or np.isnan(value) else f"{value * scale:.{digits}f}"

    for r in rows:
        lines.append(
            f"| {r.what} | {number(r.seconds, 1e3, 1)} | {number(r.images / r.seconds, 1, 1)} | "
            f"{'' if r.steps is None else r.steps} | {number(r.ann_seconds, 1e3, 1)} | "
            f"{number(r.ratio)} | {number(r.min_ratio)} | "
            f"{number(r.compile_s, 1, 1)} | {number(r.xla_mib, 1, 0)} | "
            f"{number(r.peak_mib, 1, 0)} | {r.note} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The JAX functions timed.

def _methods(text: str) -> list[str]:
    """``--methods``: comma-separated ``snn.methods`` entries, each checked."""
    specs = [part.strip() for part in text.split(",") if part.strip()]
    for spec in specs:
        try:
            method_setting(spec, 0)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return specs


def snn_settings(time_steps: Sequence[int], presims: Sequence[int],
                 iterations: Sequence[int]) -> list[tuple[int, int, int]]:
    """(T, rho, k) triples: k = 1 for rho = 0, every k for rho > 0."""
    out = []
    for t in time_steps:
        for rho in presims:
            for k in ([1] if rho == 0 else iterations):
                out.append((t, rho, k))
    return out


# ---------------------------------------------------------------------------
# The PyTorch yardstick (torch imported only here).

def build_torch_model(model, image_size: int, activation: str = "relu"):
    """A plain PyTorch model with the layout of the Flax ``model``.

    ``activation``: "relu" (a plain network) or "qcfs" (QCFS with a trainable
    threshold and a straight-through floor, as in the Flax model).
    """
    import torch
    import torch.nn as tnn

    class QCFS(tnn.Module):
        def __init__(self):
            super().__init__()
            self.lam = tnn.Parameter(torch.tensor(8.0))

        def forward(self, z):
            u = z / self.lam * model.levels + 0.5
            u = u + (torch.floor(u) - u).detach()      # straight-through floor
            return torch.clamp(u / model.levels, 0, 1) * self.lam

    if activation not in ("relu", "qcfs"):
        raise ValueError(f"activation must be 'relu' or 'qcfs', got {activation!r}")
    act = tnn.ReLU if activation == "relu" else QCFS

    if isinstance(model, VGG):
        modules, c = [], 3
        for widths in model.blocks:
            for w in widths:
                modules += [tnn.Conv2d(c, w, 3, 1, 1), tnn.BatchNorm2d(w), act()]
                c = w
            modules.append(tnn.AvgPool2d(2))
        side = image_size // 2 ** len(model.blocks)
        modules += [tnn.Flatten(), tnn.Linear(c * side * side, model.hidden), act(),
                    tnn.Linear(model.hidden, model.hidden), act(),
                    tnn.Linear(model.hidden, model.num_classes)]
        return tnn.Sequential(*modules)
    if isinstance(model, ResNet):
        class Block(tnn.Module):
            def __init__(self, c_in, c_out, stride):
                super().__init__()
                self.body = tnn.Sequential(
                    tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), tnn.BatchNorm2d(c_out),
                    act(), tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                    tnn.BatchNorm2d(c_out))
                self.shortcut = (tnn.Identity() if stride == 1 and c_in == c_out else
                                 tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride, 0, bias=False),
                                                tnn.BatchNorm2d(c_out)))
                self.act = act()

            def forward(self, x):
                return self.act(self.body(x) + self.shortcut(x))

        c = model.stage_widths[0]
        modules = [tnn.Conv2d(3, c, 3, 1, 1, bias=False), tnn.BatchNorm2d(c), act()]
        for s, (size, width) in enumerate(zip(model.stage_sizes, model.stage_widths), start=1):
            for b in range(size):
                modules.append(Block(c, width, 2 if (s > 1 and b == 0) else 1))
                c = width
        modules += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(c, model.num_classes)]
        return tnn.Sequential(*modules)
    if isinstance(model, FastNet):
        return _torch_fastnet(model, act)
    raise ValueError(f"no PyTorch yardstick for {type(model).__name__}")


def _torch_fastnet(model, act):
    """The PyTorch form of a convertible :class:`FastNet` (QCFS, average pooling)."""
    import torch.nn as tnn

    if model.activation != "qcfs" or model.pool != "avg":
        raise ValueError("the PyTorch FastNet yardstick is the convertible form "
                         "(activation qcfs, pool avg)")
    k = model.whiten_size
    modules, c = [tnn.Conv2d(3, 2 * 3 * k * k, k, 1, 0), act()], 2 * 3 * k * k
    for width in model.widths:
        for i in range(model.convs_per_group):
            modules.append(tnn.Conv2d(c, width, 3, 1, 1, bias=False))
            if i == 0:
                modules.append(tnn.AvgPool2d(2))
            modules += [tnn.BatchNorm2d(width, eps=model.bn_epsilon), act()]
            c = width
    modules += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                tnn.Linear(c, model.num_classes, bias=False)]
    return tnn.Sequential(*modules)


def torch_callables(model, batch: int, image_size: int, seed: int,
                    activation: str = "relu", channels_last: bool = False) -> dict[str, Callable]:
    """``{'forward': ..., 'train': ...}`` closures timing the PyTorch model."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(cores())
    net = build_torch_model(model, image_size, activation)
    images = torch.randn(batch, 3, image_size, image_size)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, model.num_classes, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward():
        net.eval()
        with torch.no_grad():
            return net(images)

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), labels)
        loss.backward()
        opt.step()
        return loss

    return {"forward": forward, "train": train}


# ---------------------------------------------------------------------------

def _block(repeats: int, torch_fns: dict) -> int:
    """Turn length: call by call for JAX alone, half the repeats against PyTorch."""
    return max(1, (repeats + 1) // 2) if torch_fns else 1


def run(args: argparse.Namespace, out=sys.stdout) -> list[Row]:
    """Runs the benchmark described by ``args``; prints and returns the rows."""
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(device_info())
    say(f"arch {args.arch}, batch {args.batch}, image {args.image_size}, classes "
        f"{args.num_classes}, L={args.levels}, repeats {args.repeats}, conv impl "
        f"{args.conv_impl}, neuron {'lax.scan' if args.scan_neuron else 'auto (fused on CPU)'}")
    options = {} if args.plain_jit else xla_options.compiler_options()
    say(f"compiler options: {options or 'jax.jit defaults'}")
    model = _model(args)
    key_init, key_x, key_y = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    images = jax.random.normal(key_x, (args.batch, args.image_size, args.image_size, 3))
    labels = jax.random.randint(key_y, (args.batch,), 0, args.num_classes)
    mask = jnp.ones((args.batch,), bool)
    variables = jax.jit(model.init)(key_init, images[:1])
    torch_fns = (torch_callables(model, args.batch, args.image_size, args.seed,
                                 args.torch_activation, args.torch_channels_last)
                 if args.torch else {})

    def timings(fns: dict[str, Callable[[], Any]], block: int = 1) -> dict[str, list[float]]:
        if args.compile_only:
            return {name: [float("nan")] for name in fns}
        return interleaved_times(fns, args.repeats, block=block)

    rows: list[Row] = []
    ann, ann_compile = compile_timed(model.apply, variables, images,
                                     compiler_options=options)
    ann_call = lambda: ann(variables, images)
    if not args.skip_ann:
        fns = {"ann": ann_call}
        if torch_fns:
            fns["torch"] = torch_fns["forward"]
        times = timings(fns, block=_block(args.repeats, torch_fns))
        median = statistics.median(times["ann"])
        rows.append(Row("ANN forward", median, args.batch, ann_compile, xla_mib=xla_mib(ann),
                        peak_mib=peak_mib()[0]))
        if torch_fns:
            t = statistics.median(times["torch"])
            rows.append(Row(f"PyTorch ANN forward ({args.torch_activation})", t, args.batch,
                            note=f"JAX / PyTorch = {median / t:.2f}"))
        say(format_table(rows[-2 if torch_fns else -1:]))

    if not args.skip_snn:
        runs = [(t, SnnSetting(rho, k), f"rho={rho} k={k}")
                for t, rho, k in snn_settings(args.time_steps, args.presim, args.iterations)]
        runs += [(t, setting, setting.key) for t in args.time_steps
                 for setting in (method_setting(spec, 0) for spec in args.methods)]
        for t, setting, what in runs:
            for mb in args.micro_batch:
                evaluate = snn_eval_step(model, setting, t, mb, unroll=not args.scan_neuron)
                snn, compile_s = compile_timed(evaluate, variables, images, labels, mask,
                                               compiler_options=options)
                times = timings({"snn": lambda snn=snn: snn(variables, images, labels, mask),
                                 "ann": ann_call})
                steps = setting.method.steps(t, setting.presim)
                name = f"SNN T={t} {what}" + ("" if mb is None else f" mb={mb}")
                rows.append(Row(name, statistics.median(times["snn"]), args.batch, compile_s,
                                steps=steps, ann_seconds=statistics.median(times["ann"]),
                                xla_mib=xla_mib(snn), peak_mib=peak_mib()[0],
                                min_ratio=min(times["snn"]) / (steps * min(times["ann"]))))
                say(format_table(rows[-1:]).splitlines()[-1])

    if not args.skip_train:
        state = [TrainState.create(apply_fn=model.apply, params=variables["params"],
                                   batch_stats=variables["batch_stats"],
                                   tx=optax.sgd(0.01, momentum=0.9))]
        step, compile_s = compile_timed(train_step(model), state[0], images, labels,
                                        donate_argnums=(0,), compiler_options=options)

        def train_call():
            state[0], metrics = step(state[0], images, labels)
            return metrics["loss"]

        fns = {"train": train_call}
        if torch_fns:
            fns["torch"] = torch_fns["train"]
        times = timings(fns, block=_block(args.repeats, torch_fns))
        median = statistics.median(times["train"])
        flops = xla_flops(step)
        rows.append(Row("train step (SGD, BN train)", median, args.batch, compile_s,
                        xla_mib=xla_mib(step), peak_mib=peak_mib()[0],
                        note="" if flops is None or np.isnan(median) else
                        f"{flops / 1e9:.1f} GFLOP (XLA cost analysis), "
                        f"{flops / median / 1e9:.0f} GFLOP/s"))
        if torch_fns:
            tt = statistics.median(times["torch"])
            rows.append(Row(f"PyTorch train step ({args.torch_activation})", tt, args.batch,
                            note=f"JAX / PyTorch = {median / tt:.2f}"))
        say(format_table(rows[-2 if torch_fns else -1:]))

    say("")
    say(f"peak MiB: {peak_mib()[1]}; xla MiB: compiled arguments + outputs + temporaries")
    say(format_table(rows))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device_info:
        print(device_info())
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
