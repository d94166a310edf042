"""Every config's ahead-of-time plan on the given targets, in one table.

Usage (GPU targets need the CUDA plugin, TPU targets libtpu; see
benchmarks/aot.py)::

    JAX_PLATFORMS=cpu python -m benchmarks.plan_configs --out=plans \\
        [--target=gpu:h100 --target=gpu:h100:8] [--config=configs/cifar10.py ...]

Runs ``benchmarks.aot`` once per (config, target), each in a process of its
own (a topology's devices belong to the process that made them), writes
each plan as ``<out>/<config>__<target>.json`` and its printed table as
``.txt``, and prints one row per plan: how many programs compiled and fit,
the largest program's memory per device, and the estimated images/s of the
training step and of the slowest SNN step. The figures are compile-time
facts and roofline estimates, as in benchmarks/aot.py. A plan that already
has its JSON in ``--out`` is read, not compiled again (``--again`` to redo).
Exit status 0 when every program of every plan compiled and fits.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARGETS = ("gpu:h100", "gpu:h100:8")


def all_configs() -> list[str]:
    """configs/*.py that define a run (not the shared defaults)."""
    names = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
    return [os.path.relpath(n, ROOT) for n in names
            if os.path.basename(n) not in ("__init__.py", "default.py")]


def plan_path(out: str, config: str, target: str) -> str:
    stem = os.path.splitext(os.path.basename(config))[0]
    return os.path.join(out, f"{stem}__{target.replace(':', '-')}.json")


def run_plan(config: str, target: str, path: str) -> tuple[int, float]:
    """benchmarks.aot in a child process; its table next to the JSON."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.aot", f"--config={config}",
                           f"--target={target}", f"--json={path}"],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    with open(path[:-len(".json")] + ".txt", "w") as f:
        f.write(proc.stdout + proc.stderr)
    return proc.returncode, time.perf_counter() - start


def summary_row(config: str, target: str, plan: dict | None, status: str) -> str:
    """One markdown row of a plan (or of the failure to make one)."""
    if plan is None:
        return f"| {config} | {target} | {status} | | | | |"
    rows = plan["programs"]
    good = [r for r in rows if r["compiled"] and r["fits"]]
    compiled = [r for r in rows if r["compiled"]]
    largest = max(compiled, key=lambda r: r["total_gib"]) if compiled else None
    train = [r for r in compiled if r["program"] == "train step"]
    snn = [r for r in compiled if r["program"].startswith("SNN")]
    slowest = min(snn, key=lambda r: r["estimate_images_s"]) if snn else None
    refused = "; ".join(f"{r['program']}: {r['error']}" for r in rows if not r["compiled"])
    cells = [config, target, f"{len(good)} of {len(rows)}",
             f"{largest['total_gib']:.2f} ({largest['program']})" if largest else "",
             f"{train[0]['estimate_images_s']:.0f}" if train else "",
             f"{slowest['estimate_images_s']:.0f} ({slowest['program']})" if slowest else "",
             refused]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the plans (JSON and tables)")
    parser.add_argument("--target", action="append", default=[],
                        help=f"repeatable; default {', '.join(DEFAULT_TARGETS)}")
    parser.add_argument("--config", action="append", default=[],
                        help="repeatable; default every file in configs/")
    parser.add_argument("--again", action="store_true", help="compile plans already in --out")
    args = parser.parse_args(argv)
    targets = args.target or list(DEFAULT_TARGETS)
    configs = args.config or all_configs()
    os.makedirs(args.out, exist_ok=True)
    lines = ["| config | target | programs compiled and fitting | largest GiB per device "
             "| train est. images/s | slowest SNN est. images/s | refused or failed |",
             "|---|---|---|---|---|---|---|"]
    ok = True
    for config in configs:
        for target in targets:
            path = plan_path(args.out, config, target)
            status = "reused"
            if args.again or not os.path.exists(path):
                code, seconds = run_plan(config, target, path)
                status = f"exit {code}, {seconds:.0f} s"
                print(f"{config} {target}: {status}", file=sys.stderr, flush=True)
            plan = None
            if os.path.exists(path):
                with open(path) as f:
                    plan = json.load(f)
            ok &= plan is not None and all(r["compiled"] and r["fits"]
                                           for r in plan["programs"])
            lines.append(summary_row(config, target, plan,
                                     f"no plan ({status}; see {path[:-5]}.txt)"))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
