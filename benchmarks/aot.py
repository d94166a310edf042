"""Ahead-of-time plan of a config's programs for an accelerator topology.

Usage (on any host; TPU targets need libtpu: ``pip install "jax[tpu]"``)::

    JAX_PLATFORMS=cpu python -m benchmarks.aot --config=configs/cifar100.py \\
        --target=tpu:v5e:2x2 [--json plan.json]

Compiles, without the accelerator, every program the pipeline would run for
the config on the target: the training step, the ANN evaluation step, the
SNN evaluation step of every setting (plain conversion and COS for each k,
at S = max(max T, rho) steps) and the static-potential step when
``snn.static.enabled``. Each is built by the pipeline's own functions, on a
1-D ``data`` mesh over all the target's chips (as ``train.sharding.make_mesh``
builds it, every process's chips included), with the config's global batch
sizes and ``config.precision``, traced under ``cosjax.target.use(<platform>)``
so that it holds the accelerator's forms, never the CPU's.

For each program it prints: compiled, or the compiler's error; per-chip
argument, output and temporary memory against the chip's HBM; FLOPs and
bytes accessed per chip (XLA's cost analysis); the collectives of the
compiled HLO; compile seconds; and a roofline **estimate** of the step time
and images/s: ``max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)``, with the
peak divided by the bf16 passes that ``config.precision`` costs on the MXU
(highest: 6, high: 3, default: 1). An estimate from the chip's data sheet,
not a measurement. The table is also written as JSON (``--json``). Exit
status 0 when every program compiles and fits, 1 otherwise, 2 for bad
arguments.

Chip figures (:data:`CHIPS`): HBM per chip, peak bf16 FLOP/s and HBM
bandwidth per chip from Google Cloud's TPU system-architecture pages
(v4, v5e, v5p, v6e). Where the topology's JAX devices are TensorCores
(v4: two per chip), memory, FLOPs and bytes are per device and the chip's
figures are shared between its cores (:func:`per_device`). A batch that
does not divide over the devices is reported as the start-up refusal the
pipeline would give (``--set snn.eval_batch_size=...`` to plan another).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import cli
from benchmarks.hlo import collectives


@dataclass(frozen=True)
class Chip:
    hbm_gib: float
    bf16_tflops: float
    hbm_gbps: float


CHIPS = {
    "v4": Chip(32, 275, 1228),
    "v5e": Chip(16, 197, 819),
    "v5p": Chip(95, 459, 2765),
    "v6e": Chip(32, 918, 1640),
}
"""Per chip: HBM (GiB), peak bf16 TFLOP/s, HBM bandwidth (GB/s)."""

def per_device(chip_kind: str, devices) -> tuple[Chip, int]:
    """The chip's figures per JAX device and the devices per chip: a topology
    whose devices are TensorCores (v4 here: two per chip, ``core_on_chip``)
    shares each chip's HBM, FLOP/s and bandwidth between its cores."""
    chips = {(d.process_index, tuple(getattr(d, "coords", ()) or (d.id,))) for d in devices}
    cores = max(1, len(devices) // len(chips))
    chip = CHIPS[chip_kind]
    return Chip(chip.hbm_gib / cores, chip.bf16_tflops / cores, chip.hbm_gbps / cores), cores


PRECISION_PASSES = {"highest": 6, "high": 3, "default": 1}
"""bf16 MXU passes per float32 matmul at each ``jax.default_matmul_precision``."""


def _load_config(path: str):
    if not os.path.isfile(path):
        raise SystemExit(f"error: no config file {path!r}")
    spec = importlib.util.spec_from_file_location("aot_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _devices(target: str):
    """``tpu:<kind>:<topology>`` -> (chip kind, the topology's devices)."""
    parts = target.split(":")
    if len(parts) != 3 or parts[0] != "tpu" or parts[1] not in CHIPS:
        raise SystemExit(f"error: --target must be tpu:<{'|'.join(CHIPS)}>:<topology> "
                         f"(e.g. tpu:v5e:2x2), got {target!r}")
    if importlib.util.find_spec("libtpu") is None:
        raise SystemExit("error: TPU targets need libtpu: pip install 'jax[tpu]'")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(topology_name=f"{parts[1]}:{parts[2]}",
                                                platform="tpu")
    except Exception as err:   # libtpu's own error types
        raise SystemExit(f"error: libtpu could not describe topology {parts[1]}:{parts[2]}: "
                         f"{str(err).splitlines()[0]}") from err
    return parts[1], topology.devices


def _abstract(tree: Any, sharding) -> Any:
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a), sharding=sharding), tree)


def programs(config, model, shardings, image_shape) -> dict[str, tuple[Any, tuple]]:
    """``{name: (jitted step, abstract arguments)}`` of the pipeline for ``config``."""
    from train.data import batching
    from train.evaluation import eval_steps
    from train.training_loop import create_state, make_train_step

    data, replicated = shardings
    train_batch, eval_batch = config.optim.batch_size, config.snn.eval_batch_size
    state = jax.eval_shape(lambda: create_state(model, config, image_shape, 1000, None))
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def batch(n, *shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct((n, *shape), dtype, sharding=data)

    eval_args = (batch(eval_batch, *image_shape), batch(eval_batch, dtype=jnp.int32),
                 batch(eval_batch, dtype=jnp.bool_))
    augment = batching.device_transform(config, 50_000)
    out = {"train step": (make_train_step(model, data, replicated, augment, config, 1000),
                          (_abstract(state, replicated),
                           batch(train_batch, *image_shape,
                                 dtype=jnp.uint8 if augment is not None else jnp.float32),
                           batch(train_batch, dtype=jnp.int32), batch(train_batch, dtype=jnp.int32))),
           "ANN eval": (eval_steps.make_ann_eval_step(model, data, replicated),
                        (_abstract(variables, replicated), *eval_args))}
    t_max, micro = max(config.snn.time_steps), config.snn.micro_batch or None
    for setting in eval_steps.snn_settings(config):
        step = eval_steps.make_snn_eval_step(model, setting, t_max, data, replicated, micro)
        out[f"SNN {setting.key} S={setting.method.steps(t_max, setting.presim)}"] = (
            step, (_abstract(variables, replicated), *eval_args))
    return out


def plan(config, chip_kind: str, devices, platform: str = "tpu") -> list[dict[str, Any]]:
    """Compiles every program; returns one row of figures per program."""
    from train import architectures
    from train.data.sources import TFDS_DATASETS

    num_classes = TFDS_DATASETS.get(config.dataset.name, 10)
    model = architectures.from_config(config, num_classes)
    mesh = Mesh(np.asarray(devices), ("data",))
    shardings = (NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))
    image_shape = (config.dataset.image_size, config.dataset.image_size, 3)
    chip, _ = per_device(chip_kind, devices)
    peak = chip.bf16_tflops * 1e12 / PRECISION_PASSES[config.precision]
    rows = []
    from cosjax import target

    with target.use(platform), jax.default_matmul_precision(config.precision):
        built = programs(config, model, shardings, image_shape)
        for name, (step, args) in built.items():
            batch = args[1].shape[0]
            row: dict[str, Any] = {"program": name, "global_batch": batch,
                                   "per_chip_batch": batch // len(devices)}
            field = "optim.batch_size" if name == "train step" else "snn.eval_batch_size"
            if batch % len(devices):   # train/validate.py refuses this at start-up
                row.update(compiled=False, error=f"refused at start-up: {field}={batch} does not "
                                                 f"divide over the {len(devices)} devices")
                rows.append(row)
                continue
            start = time.perf_counter()
            try:
                compiled = step.trace(*args).lower(lowering_platforms=(platform,)).compile()
            except Exception as err:   # the compiler's own error, reported as a row
                row.update(compiled=False, error=str(err).splitlines()[0][:300])
                rows.append(row)
                continue
            row["compile_s"] = round(time.perf_counter() - start, 1)
            memory = compiled.memory_analysis()
            gib = 2.0 ** 30
            row.update(compiled=True,
                       argument_gib=memory.argument_size_in_bytes / gib,
                       output_gib=memory.output_size_in_bytes / gib,
                       temp_gib=memory.temp_size_in_bytes / gib,
                       alias_gib=memory.alias_size_in_bytes / gib)
            row["total_gib"] = (row["argument_gib"] + row["output_gib"] + row["temp_gib"]
                                - row["alias_gib"])
            row["fits"] = row["total_gib"] <= chip.hbm_gib
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
            row.update(gflops=flops / 1e9, gbytes=moved / 1e9,
                       collectives=collectives(compiled.as_text()))
            seconds = max(flops / peak, moved / (chip.hbm_gbps * 1e9))
            row.update(estimate_ms=seconds * 1e3,
                       estimate_images_s=batch / seconds if seconds else float("inf"))
            rows.append(row)
    return rows


def _table(rows, chip_kind, devices) -> str:
    chip, cores = per_device(chip_kind, devices)
    unit = "chip" if cores == 1 else "device"
    what = (f"{len(devices)} x {devices[0].device_kind}" if cores == 1 else
            f"{len(devices)} devices = {len(devices) // cores} x {devices[0].device_kind} "
            f"with {cores} TensorCores each")
    lines = [f"{what} ({chip_kind}: {chip.hbm_gib:g} GiB HBM, {chip.bf16_tflops:g} bf16 TFLOP/s, "
             f"{chip.hbm_gbps:g} GB/s per {unit}); memory, FLOPs and bytes per {unit}; time and "
             "images/s are roofline ESTIMATES",
             f"| program | batch (per {unit}) | compiled | args GiB | temp GiB | total GiB | fits "
             "| GFLOP | GB accessed | collectives | compile s | est. ms | est. images/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["compiled"]:
            lines.append(f"| {r['program']} | {r['global_batch']} ({r['per_chip_batch']}) | "
                         f"no: {r['error']} |" + " |" * 10)
            continue
        coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items() if v) or "none"
        lines.append(
            f"| {r['program']} | {r['global_batch']} ({r['per_chip_batch']}) | yes | "
            f"{r['argument_gib']:.2f} | {r['temp_gib']:.2f} | {r['total_gib']:.2f} | "
            f"{'yes' if r['fits'] else 'NO'} | {r['gflops']:.1f} | {r['gbytes']:.2f} | {coll} | "
            f"{r['compile_s']} | {r['estimate_ms']:.2f} | {r['estimate_images_s']:.0f} |")
    return "\n".join(lines)


def _write_json(path: str, payload: dict) -> None:
    """Atomically: a temporary file in the same directory, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        json.dump(payload, f, indent=1)
    os.replace(f.name, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a config file, e.g. configs/cifar100.py")
    parser.add_argument("--target", required=True, help="tpu:<kind>:<topology>, e.g. tpu:v5e:2x2")
    parser.add_argument("--json", default="", help="also write the table here as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config override, e.g. snn.eval_batch_size=128 (repeatable)")
    args = parser.parse_args(argv)
    config = _load_config(args.config)
    cli.set_fields(config, args.set)
    try:
        chip_kind, devices = _devices(args.target)
    except SystemExit as bad:      # a bad --target: one line and exit 2, as for any bad argument
        print(bad, file=sys.stderr)
        return 2
    processes = len({d.process_index for d in devices})
    print(f"config {args.config}, target {args.target}: {len(devices)} devices on "
          f"{processes} process(es), jax {jax.__version__}", flush=True)
    rows = plan(config, chip_kind, devices)
    print(_table(rows, chip_kind, devices))
    if args.json:
        _write_json(args.json, {"config": args.config, "target": args.target,
                                "chips": len(devices), "processes": processes,
                                "chip": CHIPS[chip_kind].__dict__,
                                "per_device": per_device(chip_kind, devices)[0].__dict__,
                                "cores_per_chip": per_device(chip_kind, devices)[1],
                                "programs": rows})
    ok = all(r["compiled"] and r["fits"] for r in rows)
    if not ok:
        print("error: a program did not compile or does not fit the chip's memory",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
