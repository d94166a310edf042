"""NVIDIA GPUs described for ahead-of-time compilation without one.

XLA compiles for a CUDA device it cannot see when it is given the device's
description: a ``stream_executor.GpuTargetConfigProto`` in text format
(``jax.experimental.topologies.get_topology_desc(..., platform="cuda",
target_config=TEXT, topology="1x1x<n>")``). The project writes each one here
from NVIDIA's published figures, not from XLA's own spec files (whose newer
fields the installed jaxlib does not parse):

- H100 SXM5 80 GB and H200 SXM 141 GB: the "NVIDIA H100 Tensor Core GPU"
  and "NVIDIA H200 Tensor Core GPU" data sheets (SXM columns: memory,
  bandwidth, FP32 / TF32 / BF16 Tensor Core TFLOP/s; the sheets print the
  tensor-core rates "with sparsity", halved here to the dense rates), and
  the "NVIDIA H100 Tensor Core GPU Architecture" white paper (GH100 in the
  SXM5 part: 132 SMs, 128 FP32 cores per SM, 1,980 MHz boost clock, 50 MB
  L2, 228 KB shared memory per SM, 227 KB per thread block). H200 is the
  same GH100 with HBM3e.
- A100 SXM4 80 GB: the "NVIDIA A100 Tensor Core GPU" data sheet (memory,
  2,039 GB/s, FP32 19.5 / TF32 156 / BF16 312 TFLOP/s dense) and the
  "NVIDIA A100 Tensor Core GPU Architecture" white paper (GA100 in the A100:
  108 SMs, 64 FP32 cores per SM, 1,410 MHz boost clock, 40 MB L2, 164 KB
  shared memory per SM, 163 KB per thread block).
- Limits common to compute capabilities 8.0 and 9.0 (threads per block and
  per SM, registers, grid dimensions): the CUDA C++ Programming Guide's
  table of technical specifications per compute capability.

CUDA and cuDNN versions: those of the wheels ``jax[cuda12]`` installs
(cuDNN 9, CUDA 12); XLA reads them to decide which library features exist.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPUS", "Gpu", "target_config"]


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU model: what the plan uses, and what XLA is told."""

    device_kind: str           # the name CUDA reports for the part
    hbm_gb: float              # memory, GB (10^9 bytes), as the data sheet prints it
    hbm_gbps: float            # memory bandwidth, GB/s
    fp32_tflops: float         # peak FP32 (CUDA cores), dense
    tf32_tflops: float         # peak TF32 Tensor Core, dense
    bf16_tflops: float         # peak BF16 Tensor Core, dense
    compute_capability: tuple[int, int]
    sms: int
    fp32_cores_per_sm: int
    boost_ghz: float
    l2_bytes: int
    shared_per_sm_bytes: int
    shared_per_block_optin_bytes: int

    def peak_tflops(self, precision: str) -> float:
        """Peak dense TFLOP/s of float32 matmuls and convolutions at a
        ``jax.default_matmul_precision``: "highest"/"float32" keep FP32 (CUDA
        cores); the others may use TF32 Tensor Cores. Compiled for a GPU,
        "high"/"tensorfloat32" give the HLO ``operand_precision={high,high}``
        and "default"/"bfloat16" no operand precision (DEFAULT): float32
        operands are not rounded to bf16 on a GPU, so the BF16 rate
        (:attr:`bf16_tflops`) applies only to bf16 arrays."""
        fp32 = precision in ("highest", "float32")
        return self.fp32_tflops if fp32 else self.tf32_tflops


KIB, MB = 1024, 1_000_000

GPUS = {
    "h100": Gpu("NVIDIA H100 80GB HBM3", 80, 3350, 67, 494.5, 989.5, (9, 0), 132, 128, 1.98,
                50 * MB, 228 * KIB, 227 * KIB),
    "h200": Gpu("NVIDIA H200", 141, 4800, 67, 494.5, 989.5, (9, 0), 132, 128, 1.98, 50 * MB,
                228 * KIB, 227 * KIB),
    "a100": Gpu("NVIDIA A100-SXM4-80GB", 80, 2039, 19.5, 156, 312, (8, 0), 108, 64, 1.41,
                40 * MB, 164 * KIB, 163 * KIB),
}
"""The GPUs ``benchmarks.aot --target=gpu:<name>[:<count>]`` plans for (SXM parts)."""

CUDNN_VERSION = (9, 8, 0)
CUDA_VERSION = (12, 8, 0)
"""What XLA is told is installed (a cuDNN 9 and a CUDA 12 that the
``jax[cuda12]`` wheels of jax 0.10 satisfy)."""


def target_config(gpu: Gpu) -> str:
    """``gpu`` as a ``stream_executor.GpuTargetConfigProto`` in text format."""
    major, minor = gpu.compute_capability
    fields = {
        "threads_per_block_limit": 1024,
        "threads_per_warp": 32,
        "shared_memory_per_block": 48 * KIB,    # without opt-in
        "shared_memory_per_core": gpu.shared_per_sm_bytes,
        "threads_per_core_limit": 2048,
        "core_count": gpu.sms,
        "fpus_per_core": gpu.fp32_cores_per_sm,
        "block_dim_limit_x": 2**31 - 1,
        "block_dim_limit_y": 65535,
        "block_dim_limit_z": 65535,
        "memory_bandwidth": int(gpu.hbm_gbps * 1e9),
        "l2_cache_size": gpu.l2_bytes,
        "clock_rate_ghz": gpu.boost_ghz,
        "device_memory_size": int(gpu.hbm_gb * 1e9),
        "shared_memory_per_block_optin": gpu.shared_per_block_optin_bytes,
        "registers_per_core_limit": 65536,
        "registers_per_block_limit": 65536,
    }
    body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
    version = "major: {} minor: {} patch: {}"
    return (f"gpu_device_info {{\n{body}\n"
            f"  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
            f'platform_name: "CUDA"\n'
            f"dnn_version_info {{ {version.format(*CUDNN_VERSION)} }}\n"
            f"runtime_version {{ {version.format(*CUDA_VERSION)} }}\n"
            f'device_description_str: "{gpu.device_kind}"\n')
