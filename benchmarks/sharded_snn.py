"""Sharded SNN evaluation: collectives in the compiled program and images/s.

Usage (8 host-platform CPU devices stand in for 8 chips)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m benchmarks.sharded_snn [--arch resnet20] [--batch 64] [--time-steps 8]
        [--presim 4] [--repeats 5]

The pipeline's SNN evaluation step (``train.evaluation.eval_steps.snn_eval_step``, random
weights, the batch sharded over all devices) is compiled two ways in one run:

- ``jit``: ``jax.jit`` with ``NamedSharding(mesh, P("data"))`` on the batch,
  GSPMD partitioning the program (what the pipeline and a user's own jit do);
- ``shard_map``: the same step inside ``jax.shard_map``, each device running
  its own slice of the batch (no collectives but the final sum, by
  construction): the yardstick for what a partitioned program should cost.

For each it prints the collectives in the compiled HLO (all-gather,
all-to-all, collective-permute, all-reduce, reduce-scatter: counts) and the
median images/s. A well-partitioned ``jit`` program has no all-to-all, no
collective-permute and no all-gather, and runs as fast as ``shard_map``.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.hlo import COLLECTIVES, collectives
from benchmarks.timing import device_info, interleaved_times
from cosjax import xla_options
from cosjax.models import create_model
from train.evaluation.eval_steps import SnnSetting, snn_eval_step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=8)
    parser.add_argument("--presim", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    devices = jax.devices()
    if args.batch % len(devices):
        parser.error(f"--batch {args.batch} is not a multiple of the {len(devices)} devices")
    print(device_info())
    mesh = Mesh(np.array(devices), ("data",))
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

    model = create_model(args.arch, num_classes=10, levels=8)
    shape = (args.batch, args.image_size, args.image_size, 3)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape[1:]))
    images = jax.random.normal(jax.random.PRNGKey(1), shape)
    labels = jnp.zeros((args.batch,), jnp.int32)
    mask = jnp.ones((args.batch,), bool)
    step = snn_eval_step(model, SnnSetting(args.presim, 1), args.time_steps)

    def per_device(v, x, y, m):
        correct, count = step(v, x, y, m)
        return jax.lax.psum(correct, "data"), jax.lax.psum(count, "data")

    programs = {
        "jit": xla_options.jit(step, in_shardings=(replicated, data, data, data),
                       out_shardings=replicated),
        "shard_map": xla_options.jit(jax.shard_map(per_device, mesh=mesh,
                                           in_specs=(P(), P("data"), P("data"), P("data")),
                                           out_specs=(P(), P()))),
    }
    placed = (jax.device_put(variables, replicated), *(jax.device_put(a, data)
                                                      for a in (images, labels, mask)))
    compiled = {name: fn.lower(*placed).compile() for name, fn in programs.items()}
    results = {name: jax.device_get(c(*placed)) for name, c in compiled.items()}
    np.testing.assert_array_equal(results["jit"][0], results["shard_map"][0])

    print(f"\n{args.arch}, batch {args.batch} over {len(devices)} devices, "
          f"T={args.time_steps}, rho={args.presim}, k=1; correct counts identical")
    times = interleaved_times({name: (lambda c=c: c(*placed)) for name, c in compiled.items()},
                              args.repeats)
    print(f"{'program':<10} " + " ".join(f"{k:>18}" for k in COLLECTIVES) + f" {'images/s':>9}")
    for name, c in compiled.items():
        counts = collectives(c.as_text())
        rate = args.batch / statistics.median(times[name])
        print(f"{name:<10} " + " ".join(f"{counts[k]:>18}" for k in COLLECTIVES) + f" {rate:>9.1f}")


if __name__ == "__main__":
    main()
