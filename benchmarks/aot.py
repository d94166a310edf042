"""Ahead-of-time plan of a config's programs for an accelerator topology.

Usage (on any host; TPU targets need libtpu: ``pip install "jax[tpu]"``, GPU
targets the CUDA plugin: ``pip install "jax[cuda12]"``, both with
``JAX_PLATFORMS=cpu`` where there is no such device)::

    JAX_PLATFORMS=cpu python -m benchmarks.aot --config=configs/cifar100.py \\
        --target=tpu:v5e:2x2 [--json plan.json]
    JAX_PLATFORMS=cpu python -m benchmarks.aot --config=configs/cifar100.py \\
        --target=gpu:h100:8

Compiles, without the accelerator, every program the pipeline would run for
the config on the target: the training step, the ANN evaluation step, the
SNN evaluation step of every setting (plain conversion and COS for each k,
at S = max(max T, rho) steps) and the static-potential step when
``snn.static.enabled``. Each is built by the pipeline's own functions, on a
1-D ``data`` mesh over all the target's devices (as ``train.sharding.make_mesh``
builds it, every process's devices included), with the config's global batch
sizes and ``config.precision``, and lowered for the target's platform, so
that it holds the accelerator's forms (chosen at lowering,
:mod:`cosjax.target`), never the CPU's; the jitted steps are built under
``cosjax.target.use(<platform>)`` so that no CPU compiler option reaches them.

Targets: ``tpu:<v4|v5e|v5p|v6e>:<topology>`` (libtpu's topologies) and
``gpu:<h100|h200|a100>[:<GPUs on one host>]`` (the project's descriptions of
the GPUs from NVIDIA's data sheets, :mod:`benchmarks.gpu_targets`).

For each program it prints: compiled, or the compiler's error; per-device
argument, output and temporary memory against the device's HBM; FLOPs and
bytes accessed per device; the collectives of the compiled HLO; on GPUs the
library kernels (cuDNN convolutions, cuBLAS and Triton GEMMs); compile
seconds; and a roofline **estimate** of the step time and images/s:
``max(FLOPs / peak FLOP/s, bytes / HBM bandwidth)``. An estimate from data
sheets, not a measurement. The table is also written as JSON (``--json``).
Exit status 0 when every program compiles and fits, 1 otherwise, 2 for bad
arguments.

TPUs: FLOPs and bytes from XLA's cost analysis of the compiled program;
the peak is the chip's bf16 rate divided by the bf16 passes that
``config.precision`` costs on the MXU (highest: 6, high: 3, default: 1).
Chip figures (:data:`CHIPS`): HBM per chip, peak bf16 FLOP/s and HBM
bandwidth per chip from Google Cloud's TPU system-architecture pages
(v4, v5e, v5p, v6e). Where the topology's JAX devices are TensorCores
(v4: two per chip), memory, FLOPs and bytes are per device and the chip's
figures are shared between its cores (:func:`per_device`).

GPUs: XLA:GPU has no cost analysis of a compiled program, and on the
optimised HLO cuDNN and cuBLAS calls count 0 FLOPs; FLOPs and bytes are
XLA's cost analysis of the *pre-optimisation* HLO (the whole program, on a
CPU client), divided by the number of GPUs (the batch is split evenly), and
labelled so. The peak is the data sheet's dense rate at the precision
(:meth:`benchmarks.gpu_targets.Gpu.peak_tflops`: FP32 for "highest", TF32
Tensor Cores for the others, "bfloat16" included: on a GPU it compiles to
the DEFAULT precision of float32 operands). Nothing is
autotuned without a GPU: temporary memory and kernel choices are the
compiler's guesses.

A batch that does not divide over the devices is reported as the start-up
refusal the pipeline would give (``--set snn.eval_batch_size=...`` to plan
another).
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

from benchmarks import cli, gpu_targets
from benchmarks.hlo import collectives, custom_calls


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


@dataclass(frozen=True)
class Target:
    """What a plan is made for: the platform lowered for, the devices, and
    per device: HBM, bandwidth and the peak FLOP/s at each precision."""

    name: str                 # as given: tpu:v5e:2x2, gpu:h100:8
    platform: str             # "tpu" or "cuda"
    kind: str                 # v5e, h100, ...
    devices: tuple
    hbm_gib: float
    hbm_gbps: float
    cores_per_chip: int = 1

    def peak_flops(self, precision: str) -> float:
        if self.platform == "cuda":
            return gpu_targets.GPUS[self.kind].peak_tflops(precision) * 1e12
        return (CHIPS[self.kind].bf16_tflops / self.cores_per_chip * 1e12
                / PRECISION_PASSES.get(precision, 1))

    def describe(self) -> str:
        n = len(self.devices)
        if self.platform == "cuda":
            gpu = gpu_targets.GPUS[self.kind]
            return (f"{n} x {gpu.device_kind} ({self.kind}: {gpu.hbm_gb:g} GB = "
                    f"{self.hbm_gib:.1f} GiB HBM, {gpu.hbm_gbps:g} GB/s, dense TFLOP/s FP32 "
                    f"{gpu.fp32_tflops:g} / TF32 {gpu.tf32_tflops:g} / BF16 {gpu.bf16_tflops:g} "
                    "per GPU, NVIDIA data sheet)")
        chip, cores = CHIPS[self.kind], self.cores_per_chip
        what = (f"{n} x {self.devices[0].device_kind}" if cores == 1 else
                f"{n} devices = {n // cores} x {self.devices[0].device_kind} "
                f"with {cores} TensorCores each")
        return (f"{what} ({self.kind}: {chip.hbm_gib:g} GiB HBM, {chip.bf16_tflops:g} bf16 "
                f"TFLOP/s, {chip.hbm_gbps:g} GB/s per chip)")


TARGET_FORMS = (f"tpu:<{'|'.join(CHIPS)}>:<topology> (e.g. tpu:v5e:2x2) or "
                f"gpu:<{'|'.join(gpu_targets.GPUS)}>[:<GPUs>] (e.g. gpu:h100:8)")


def _devices(target: str) -> Target:
    """``tpu:<kind>:<topology>`` or ``gpu:<kind>[:<count>]`` -> the :class:`Target`."""
    parts = target.split(":")
    if parts[0] == "gpu":
        return _gpu_target(target, parts)
    if len(parts) != 3 or parts[0] != "tpu" or parts[1] not in CHIPS:
        raise SystemExit(f"error: --target must be {TARGET_FORMS}, got {target!r}")
    if importlib.util.find_spec("libtpu") is None:
        raise SystemExit("error: TPU targets need libtpu: pip install 'jax[tpu]'")
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(topology_name=f"{parts[1]}:{parts[2]}",
                                                platform="tpu")
    except Exception as err:   # libtpu's own error types
        raise SystemExit(f"error: libtpu could not describe topology {parts[1]}:{parts[2]}: "
                         f"{str(err).splitlines()[0]}") from err
    chip, cores = per_device(parts[1], topology.devices)
    return Target(target, "tpu", parts[1], tuple(topology.devices), chip.hbm_gib, chip.hbm_gbps,
                  cores)


def _gpu_target(target: str, parts: list[str]) -> Target:
    count = parts[2] if len(parts) == 3 else "1"
    if (len(parts) not in (2, 3) or parts[1] not in gpu_targets.GPUS or not count.isdigit()
            or not 1 <= int(count) <= 8):
        raise SystemExit(f"error: --target must be {TARGET_FORMS} (1 to 8 GPUs on one host), "
                         f"got {target!r}")
    if importlib.util.find_spec("jax_cuda12_plugin") is None:
        raise SystemExit("error: GPU targets need the CUDA plugin: pip install 'jax[cuda12]'")
    from jax.experimental import topologies

    gpu = gpu_targets.GPUS[parts[1]]
    try:
        topology = topologies.get_topology_desc(
            topology_name=parts[1], platform="cuda",
            target_config=gpu_targets.target_config(gpu), topology=f"1x1x{count}")
    except Exception as err:   # the plugin's own error types
        hint = ("" if os.environ.get("JAX_PLATFORMS") == "cpu" else
                " (without a GPU, run with JAX_PLATFORMS=cpu: otherwise the CUDA plugin "
                "does not register)")
        raise SystemExit(f"error: could not describe {count} x {parts[1]}: "
                         f"{str(err).splitlines()[0]}{hint}") from err
    return Target(target, "cuda", parts[1], tuple(topology.devices), gpu.hbm_gb * 1e9 / 2**30,
                  gpu.hbm_gbps)


def flops_and_bytes(lowered, compiled, target: Target) -> tuple[float, float]:
    """FLOPs and bytes accessed per device: XLA's cost analysis of the
    compiled program (TPU), or of the pre-optimisation HLO on a CPU client,
    divided by the devices (GPU, where the compiled program has none)."""
    if target.platform != "cuda":
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    from jax._src.lib import _jax  # jax's own route (pxla's Lowered.cost_analysis)

    module = lowered.compiler_ir("hlo").as_hlo_module()
    cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    n = len(target.devices)
    return float(cost.get("flops", 0.0)) / n, float(cost.get("bytes accessed", 0.0)) / n


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


def plan(config, target: Target) -> list[dict[str, Any]]:
    """Compiles every program; returns one row of figures per program."""
    from train import architectures
    from train.data.sources import TFDS_DATASETS

    num_classes = TFDS_DATASETS.get(config.dataset.name, 10)
    model = architectures.from_config(config, num_classes)
    devices = target.devices
    mesh = Mesh(np.asarray(devices), ("data",))
    shardings = (NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))
    image_shape = (config.dataset.image_size, config.dataset.image_size, 3)
    peak = target.peak_flops(config.precision)
    rows = []
    from cosjax import target as cosjax_target

    # use(): cosjax's jits are created without CPU compiler options; the
    # neuron and convolution forms are chosen when lowering for the platform.
    with (cosjax_target.use("gpu" if target.platform == "cuda" else target.platform),
          jax.default_matmul_precision(config.precision)):
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
                lowered = step.trace(*args).lower(lowering_platforms=(target.platform,))
                compiled = lowered.compile()
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
            row["fits"] = row["total_gib"] <= target.hbm_gib
            flops, moved = flops_and_bytes(lowered, compiled, target)
            text = compiled.as_text()
            row.update(gflops=flops / 1e9, gbytes=moved / 1e9,
                       cost_source=("pre-optimisation HLO / devices" if target.platform == "cuda"
                                    else "compiled HLO"),
                       collectives=collectives(text))
            if target.platform == "cuda":
                row["kernels"] = custom_calls(text)
            seconds = max(flops / peak, moved / (target.hbm_gbps * 1e9))
            row.update(estimate_ms=seconds * 1e3,
                       estimate_images_s=batch / seconds if seconds else float("inf"))
            rows.append(row)
    return rows


def _kernels(census: dict[str, int]) -> str:
    """cuDNN convolutions, cuBLAS GEMMs, Triton GEMMs, then anything else."""
    groups = {"cuDNN conv": 0, "cuBLAS": 0, "Triton GEMM": 0}
    other = []
    for name, n in census.items():
        key = ("cuDNN conv" if name.startswith("__cudnn$conv") else
               "cuBLAS" if name.startswith("__cublas") else
               "Triton GEMM" if name.startswith("__triton") else None)
        if key:
            groups[key] += n
        else:
            other.append(f"{name} {n}")
    return ", ".join([f"{k} {v}" for k, v in groups.items()] + other)


def _table(rows, target: Target, precision: str) -> str:
    gpu = target.platform == "cuda"
    unit = "GPU" if gpu else "chip" if target.cores_per_chip == 1 else "device"
    source = ("FLOPs and bytes from the PRE-OPTIMISATION HLO / GPUs" if gpu else
              "FLOPs and bytes from the compiled HLO")
    lines = [f"{target.describe()}; memory, FLOPs and bytes per {unit}; {source}; peak at "
             f"precision {precision!r}: {target.peak_flops(precision) / 1e12:g} TFLOP/s per "
             f"{unit}; time and images/s are roofline ESTIMATES",
             f"| program | batch (per {unit}) | compiled | args GiB | temp GiB | total GiB | fits "
             f"| GFLOP{' (pre-opt)' if gpu else ''} | GB accessed{' (pre-opt)' if gpu else ''} "
             f"| collectives |{' library kernels |' if gpu else ''} compile s | est. ms "
             "| est. images/s |",
             "|---" * (14 if gpu else 13) + "|"]
    for r in rows:
        if not r["compiled"]:
            lines.append(f"| {r['program']} | {r['global_batch']} ({r['per_chip_batch']}) | "
                         f"no: {r['error']} |" + " |" * (11 if gpu else 10))
            continue
        coll = ", ".join(f"{k} {v}" for k, v in r["collectives"].items() if v) or "none"
        kernels = f" {_kernels(r['kernels'])} |" if gpu else ""
        lines.append(
            f"| {r['program']} | {r['global_batch']} ({r['per_chip_batch']}) | yes | "
            f"{r['argument_gib']:.2f} | {r['temp_gib']:.2f} | {r['total_gib']:.2f} | "
            f"{'yes' if r['fits'] else 'NO'} | {r['gflops']:.1f} | {r['gbytes']:.2f} | {coll} |"
            f"{kernels} {r['compile_s']} | {r['estimate_ms']:.2f} | "
            f"{r['estimate_images_s']:.0f} |")
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
    parser.add_argument("--target", required=True, help=TARGET_FORMS)
    parser.add_argument("--json", default="", help="also write the table here as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a config override, e.g. snn.eval_batch_size=128 (repeatable)")
    args = parser.parse_args(argv)
    config = _load_config(args.config)
    cli.set_fields(config, args.set)
    try:
        target = _devices(args.target)
    except SystemExit as bad:      # a bad --target: one line and exit 2, as for any bad argument
        print(bad, file=sys.stderr)
        return 2
    devices = target.devices
    processes = len({d.process_index for d in devices})
    print(f"config {args.config}, target {args.target}: {len(devices)} devices on "
          f"{processes} process(es), jax {jax.__version__}", flush=True)
    rows = plan(config, target)
    print(_table(rows, target, config.precision))
    if args.json:
        payload = {"config": args.config, "target": args.target, "platform": target.platform,
                   "chips": len(devices), "processes": processes,
                   "precision": config.precision,
                   "per_device": {"hbm_gib": target.hbm_gib, "hbm_gbps": target.hbm_gbps,
                                  "peak_tflops": target.peak_flops(config.precision) / 1e12},
                   "programs": rows}
        if target.platform == "cuda":
            payload["gpu"] = gpu_targets.GPUS[target.kind].__dict__
        else:
            payload.update(chip=CHIPS[target.kind].__dict__,
                           cores_per_chip=target.cores_per_chip)
        _write_json(args.json, payload)
    ok = all(r["compiled"] and r["fits"] for r in rows)
    if not ok:
        print("error: a program was refused at start-up, did not compile, or does not fit "
              "the device's memory",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
