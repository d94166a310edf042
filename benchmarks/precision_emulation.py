"""What reduced matmul/conv precision does to a trained model's spikes, on a CPU.

Usage::

    python -m benchmarks.precision_emulation --config=configs/quickstart.py --workdir=W \\
        [--examples 1000] [--time-steps 32] [--presim 4]

GPUs run float32 convolutions and matmuls on TF32 Tensor Cores unless the
precision is "highest", and TPUs on bf16 passes; both round the *operands*
(TF32: 10 mantissa bits, bf16: 7) and accumulate in float32. This emulates
that on a CPU: every input of a layer with a ``kernel`` (convolutions, dense
layers; the image included) and every kernel are rounded with
``lax.reduce_precision`` before the float32 product. The same trained
variables are then evaluated as the ANN and as SNNs (plain conversion and
COS, rho = ``--presim``, k = 1) at every T up to ``--time-steps``.

Printed per emulation: ANN accuracy; SNN accuracy at T = 1, 2, 4, 8, ...;
the fraction of spikes (over every neuron, step and test image) that differ
from the float32 run; and the test images whose SNN prediction at the
largest T differs from the float32 run's. An emulation of the operand rounding, not a GPU
run: the real kernels may also sum in another order (which float32 on a GPU
does as well).
"""

from __future__ import annotations

import argparse
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import cli

MANTISSA_BITS = {"float32": None, "tf32": 10, "bf16": 7}
"""Mantissa bits each emulation keeps (float32 itself keeps 23)."""


def rounded(x: jax.Array, mantissa: int | None) -> jax.Array:
    """``x`` rounded (to nearest even) to ``mantissa`` bits; unchanged for None."""
    return x if mantissa is None else lax.reduce_precision(x, exponent_bits=8,
                                                           mantissa_bits=mantissa)


def round_operands(mantissa: int | None):
    """A Flax interceptor rounding the input of every module that owns a
    ``kernel`` (use with :func:`round_kernels` for the other operand)."""
    def interceptor(next_fun, args, kwargs, context):
        if (mantissa is not None and context.method_name == "__call__"
                and context.module.has_variable("params", "kernel") and args):
            args = (rounded(args[0], mantissa),) + tuple(args[1:])
        return next_fun(*args, **kwargs)
    return interceptor


def round_kernels(variables, mantissa: int | None):
    """``variables`` with every ``kernel`` leaf rounded."""
    def leaf(path, a):
        return rounded(a, mantissa) if "kernel" in jax.tree_util.keystr(path) else a
    return jax.tree_util.tree_map_with_path(leaf, variables)


def make_eval(model, steps: int, presim: int):
    """``(variables, x [B, ...], y [B], mask [B]) -> per emulation: (ANN correct,
    SNN correct [S], spikes [layer -> [S, B, ...]])``, jitted."""
    from cosjax.simulate import correct_per_step, run_snn

    def one(variables, x, y, mask, mantissa):
        variables = round_kernels(variables, mantissa)
        spikes = {}
        with nn.intercept_methods(round_operands(mantissa)):
            ann = jnp.argmax(model.apply(variables, x), -1)
            out, _ = run_snn(model, variables, x, steps=steps, presim=presim, iterations=1,
                             on_layer=lambda name, _x, _lam, s: spikes.__setitem__(name, s))
        return (((ann == y) & mask).sum(), correct_per_step(out, y, mask), spikes,
                jnp.argmax(out.sum(0), -1))

    def run(variables, x, y, mask):
        results = {name: one(variables, x, y, mask, bits) for name, bits in MANTISSA_BITS.items()}
        reference, predicted = results["float32"][2], results["float32"][3]
        flips = {name: sum(((s != reference[k]) & mask.reshape((1, -1) + (1,) * (s.ndim - 2)))
                           .sum() for k, s in spikes.items())
                 for name, (_, _, spikes, _) in results.items()}
        changed = {name: ((p != predicted) & mask).sum() for name, (*_, p) in results.items()}
        neurons = sum(s[0, 0].size for s in reference.values())
        return ({name: (ann, snn) for name, (ann, snn, _, _) in results.items()}, flips,
                changed, neurons)

    return jax.jit(run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, help="a trained run's workdir")
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--time-steps", type=int, default=32)
    parser.add_argument("--presim", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    if args.time_steps < args.presim or args.presim < 0:
        parser.error("need 0 <= --presim <= --time-steps")

    config, model, variables, batches = cli.trained_model(args.config, args.workdir, args.set,
                                                          args.examples, args.batch)
    count = sum(int(m.sum()) for _, _, m in batches)
    steps = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= args.time_steps]
    print(f"{args.config}: {config.model.arch}, {count} test images, operands rounded to "
          f"{MANTISSA_BITS} mantissa bits, float32 accumulation (CPU emulation)")
    print("| emulation | setting | ANN % | " + " | ".join(f"T={t} %" for t in steps)
          + " | spikes flipped vs float32 | predictions changed at T=" + f"{steps[-1]} |")
    print("|---" * (len(steps) + 5) + "|")
    for label, presim in (("plain", 0), (f"COS rho={args.presim}", args.presim)):
        s = max(args.time_steps, presim)
        run = make_eval(model, s, presim)
        totals: dict = {}
        for x, y, mask in batches:
            results, flips, changed, neurons = run(variables, x, y, mask)
            for name, (ann, snn) in results.items():
                t = totals.setdefault(name, {"ann": 0, "snn": 0, "flips": 0, "changed": 0})
                t["ann"] += int(ann)
                t["snn"] = t["snn"] + jax.device_get(snn)
                t["flips"] += int(flips[name])
                t["changed"] += int(changed[name])
            totals["neuron_steps"] = totals.get("neuron_steps", 0) + neurons * s * int(mask.sum())
        for name in MANTISSA_BITS:
            t = totals[name]
            accs = " | ".join(f"{100 * t['snn'][k - 1] / count:.2f}" for k in steps)
            print(f"| {name} | {label} | {100 * t['ann'] / count:.2f} | {accs} | "
                  f"{t['flips'] / totals['neuron_steps']:.2e} | {t['changed']} of {count} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
