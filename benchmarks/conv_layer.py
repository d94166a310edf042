"""Times one 3x3 convolution layer, forward and backward, JAX versus PyTorch.

A diagnostic for the CPU training-step gap of small networks (README,
"Performance"): for each shape, the JAX forward pass (compiled with
``cosjax.xla_options``), the JAX input + kernel gradients, the PyTorch
forward pass and the PyTorch forward + backward. Calls are timed in blocks,
so that one runtime's idle threads do not slow the other's first call.

    python -m benchmarks.conv_layer [--batch 64] [--repeats 3] [--block 8]

Shapes: (channels, map size) = (16, 32), (32, 16), (64, 8), ResNet-20's
three stages.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import numpy as np
import torch
from jax import lax

from benchmarks.timing import interleaved_times
from cosjax import xla_options

SHAPES = ((16, 32), (32, 16), (64, 8))


def jax_conv(x, k):
    """``x [N, H, W, C]``, ``k [3, 3, C, C]`` -> ``[N, H, W, C]``."""
    return lax.conv_general_dilated(x, k, (1, 1), [(1, 1)] * 2,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def layer_callables(batch: int, channels: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
    k = rng.normal(size=(3, 3, channels, channels)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    forward = xla_options.jit(jax_conv)
    backward = xla_options.jit(lambda x, k, dy: jax.vjp(jax_conv, x, k)[1](dy))
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tdy = torch.tensor(dy.transpose(0, 3, 1, 2))
    tconv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def torch_forward():
        with torch.no_grad():
            return tconv(tx)

    def torch_train():
        tx.grad, tconv.weight.grad = None, None
        tconv(tx).backward(tdy)
        return tx.grad

    return {"JAX forward": lambda: forward(x, k), "JAX dx + dk": lambda: backward(x, k, dy),
            "PyTorch forward": torch_forward, "PyTorch forward + dx + dk": torch_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of blocks")
    parser.add_argument("--block", type=int, default=8, help="consecutive calls per block")
    args = parser.parse_args()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), batch {args.batch}; median ms")
    for channels, size in SHAPES:
        fns = layer_callables(args.batch, channels, size)
        times = interleaved_times(fns, args.repeats * args.block, block=args.block)
        medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        jax_total = medians["JAX forward"] + medians["JAX dx + dk"]
        cells = "  ".join(f"{name} {ms:.2f}" for name, ms in medians.items())
        print(f"{channels}->{channels} on {size}x{size}: {cells}  | JAX fwd+dx+dk {jax_total:.2f} "
              f"= {jax_total / medians['PyTorch forward + dx + dk']:.2f}x PyTorch")


if __name__ == "__main__":
    main()
