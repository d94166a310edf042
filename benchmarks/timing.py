"""Timing and memory helpers shared by the benchmark programs.

Every figure is measured in the process that prints it: warm-up calls are
untimed, results are blocked on with ``jax.block_until_ready``, and functions
that are compared take turns so that a machine shared with other jobs moves
them together.
"""

from __future__ import annotations

import importlib.metadata
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import jax


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def device_info() -> str:
    """jax version, backend, devices (with their kind), cores, torch version."""
    devices = jax.devices()
    lines = [f"jax {jax.__version__}, backend {jax.default_backend()}, "
             f"{len(devices)} x {devices[0].device_kind}",
             f"CPU cores available: {cores()}"]
    try:   # the version without importing torch (slow)
        lines.append(f"torch {importlib.metadata.version('torch')}")
    except importlib.metadata.PackageNotFoundError:
        lines.append("torch not installed")
    return "\n".join(lines)


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int,
                      block: int = 1) -> dict[str, list[float]]:
    """Wall seconds of ``repeats`` calls of each function, taken in turns.

    Each function is called twice first (warm-up, untimed), then the
    functions take turns of ``block`` consecutive calls until each has
    ``repeats`` timings (``block > 1`` keeps two runtimes with their own
    thread pools, JAX and PyTorch, from interleaving call by call). Results
    are blocked on with ``jax.block_until_ready`` (PyTorch CPU calls are
    synchronous).
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in fns.items():
            for _ in range(min(block, repeats - len(times[name]))):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - start)
    return times


def compile_timed(fn: Callable, *args, donate_argnums: tuple[int, ...] = (),
                  compiler_options: dict[str, str] | None = None) -> tuple[Any, float]:
    """``(fn jitted with compiler_options, lowered and compiled for args,
    seconds it took)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate_argnums,
                       compiler_options=compiler_options or None).lower(*args).compile()
    return compiled, time.perf_counter() - start


def xla_mib(compiled) -> float:
    """Arguments + outputs + temporaries of a compiled step, MiB (nan if unknown)."""
    try:
        ma = compiled.memory_analysis()
        total = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                 - ma.alias_size_in_bytes)
        return total / 2 ** 20
    except Exception:  # not every backend/version reports it
        return float("nan")


def xla_flops(compiled) -> float | None:
    """Floating-point operations of one call of a compiled program, from XLA's
    cost analysis (None where the backend gives none)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # not every backend/version reports it
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def peak_mib() -> tuple[float, str]:
    """``(peak MiB so far, what it measures)``."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"] / 2 ** 20, "device peak_bytes_in_use"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return rss_kib / 1024, "process RSS high-water mark"
