"""The ahead-of-time plan beside the same programs measured on this machine's GPUs.

Usage (on a machine with NVIDIA GPUs; ``benchmarks/accelerator_check.sh`` runs it)::

    python -m benchmarks.plan_check --config=configs/cifar100.py [--target=gpu:h100:1]

First :func:`benchmarks.aot.plan` for ``--target`` (default: the data-sheet
description of the local GPU model, as many as are here): memory from the
deviceless compile, and the roofline estimate. Then every program again,
compiled for and run on the local devices with the same shapes, shardings
and precision: the compiler's memory figures (now autotuned), the devices'
peak memory in use (``memory_stats``, where the platform reports it) and
the median wall time of ``--repeats`` runs after a warm-up. Printed per
program: plan GiB, measured GiB and their ratio; estimated ms, measured ms
and their ratio (measured / planned). The inputs are constants (floats 0.5,
thresholds included, integers 0, masks True, images 128): the programs do
the same work whatever the values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import aot, cli, gpu_targets


def local_target() -> str:
    """``gpu:<model>:<n>`` for this machine's GPUs (one of :data:`gpu_targets.GPUS`)."""
    devices = jax.local_devices()
    kind = devices[0].device_kind.lower()
    for name in gpu_targets.GPUS:
        if name in kind and devices[0].platform == "gpu":
            return f"gpu:{name}:{len(devices)}"
    raise SystemExit(f"error: no described GPU here (devices: {devices[0].device_kind} on "
                     f"{devices[0].platform}); give --target")


def _concrete(arg):
    """Constant arrays for an abstract argument (a tree of ShapeDtypeStructs),
    placed with its shardings."""
    def one(a):
        value = {np.dtype(np.uint8): 128, np.dtype(np.bool_): True}.get(
            np.dtype(a.dtype), 0 if jnp.issubdtype(a.dtype, jnp.integer) else 0.5)
        return jax.device_put(jnp.full(a.shape, value, a.dtype), a.sharding)
    return jax.tree_util.tree_map(one, arg)


def _run(compiled, args: list, donates: bool) -> None:
    """One call; a step that donates its state (argument 0) gets its new state back."""
    out = jax.block_until_ready(compiled(*args))
    if donates:
        args[0] = out[0]


def measure(config, repeats: int) -> dict[str, dict]:
    """``{program: {"gib": compiler's total, "peak_gib": peak in use or None,
    "ms": median wall ms}}`` on the local devices."""
    from train import architectures
    from train.data.sources import TFDS_DATASETS

    model = architectures.from_config(config, TFDS_DATASETS.get(config.dataset.name, 10))
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    image_shape = (config.dataset.image_size, config.dataset.image_size, 3)
    out = {}
    with jax.default_matmul_precision(config.precision):
        for name, (step, args) in aot.programs(config, model, (data, replicated),
                                               image_shape).items():
            if args[1].shape[0] % len(mesh.devices.flat):
                continue
            concrete = [_concrete(a) for a in args]
            compiled = step.lower(*concrete).compile()
            memory = compiled.memory_analysis()
            total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**30
            donates = name == "train step"
            _run(compiled, concrete, donates)   # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                _run(compiled, concrete, donates)
                times.append(time.perf_counter() - start)
            stats = jax.devices()[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
            out[name] = {"gib": total, "peak_gib": None if peak is None else peak / 2**30,
                         "ms": 1e3 * statistics.median(times)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--target", default="", help="the plan's target; default: the local GPUs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args(argv)
    config = aot._load_config(args.config)
    cli.set_fields(config, args.set)
    name = args.target or local_target()
    planned = {r["program"]: r for r in aot.plan(config, aot._devices(name))}
    measured = measure(config, args.repeats)
    device = jax.devices()[0]
    print(f"{args.config}: plan for {name} (deviceless compile, data-sheet ESTIMATES) beside "
          f"{len(jax.devices())} x {device.device_kind} here (measured, median of "
          f"{args.repeats}); ratio = measured / plan")
    print("| program | plan GiB | compiled here GiB | peak in use GiB | ratio | est. ms "
          "| measured ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for program, row in planned.items():
        got = measured.get(program)
        if not row["compiled"] or got is None:
            print(f"| {program} | not compiled: {row.get('error', 'refused')} |" + " |" * 6)
            continue
        peak = "n/a" if got["peak_gib"] is None else f"{got['peak_gib']:.2f}"
        print(f"| {program} | {row['total_gib']:.2f} | {got['gib']:.2f} | {peak} | "
              f"{got['gib'] / row['total_gib']:.2f} | {row['estimate_ms']:.2f} | "
              f"{got['ms']:.2f} | {got['ms'] / row['estimate_ms']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
