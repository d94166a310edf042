"""N processes of ``python -m train.main`` on this machine, as on N hosts:
jax.distributed with gloo collectives on the CPU, D CPU devices per process.

    python -m benchmarks.launch_local --processes=2 --config=configs/quickstart.py --workdir=W

Every argument other than ``--processes=N`` (default 2),
``--devices_per_process=D`` (default 1) and ``--port=P`` (default: a free
one) goes to ``train.main``, followed by ``--coordinator=127.0.0.1:P
--num_processes=N --process_id=I``. The processes share the terminal (only
process 0 prints results) and the workdir. SIGTERM and SIGINT to the
launcher go to every process once. At the end one line per process gives
its exit status and seconds; the launcher exits 0 when all did, else with
the first other status in process order. For testing and trying the
several-host code paths; on real hosts start one process per host
(docs/devices.md).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

USAGE = ("usage: python -m benchmarks.launch_local [--processes=N] [--devices_per_process=D] "
         "[--port=P] --config=configs/NAME.py --workdir=DIR [train.main flags ...]")
OWN = ("processes", "devices_per_process", "port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_arguments(argv: list[str]) -> tuple[dict[str, int], list[str]]:
    """``({processes, devices_per_process, port}, the arguments for
    train.main)``; ``ValueError`` with one line on a bad value of ours."""
    own = {"processes": 2, "devices_per_process": 1, "port": 0}
    rest = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and name in OWN:
            if not sep or not value.isdigit() or (int(value) < 1 and name != "port"):
                raise ValueError(f"--{name} needs a positive integer, e.g. --{name}=2")
            own[name] = int(value)
        else:
            rest.append(arg)
    return own, rest


def environment(devices: int, base: dict[str, str]) -> dict[str, str]:
    """``base`` with the CPU platform, gloo collectives and ``devices`` CPU devices."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", ""))
    return {**base, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "XLA_FLAGS": f"{flags.strip()} --xla_force_host_platform_device_count={devices}".strip()}


def commands(processes: int, port: int, arguments: list[str]) -> list[list[str]]:
    return [[sys.executable, "-m", "train.main", *arguments, f"--coordinator=127.0.0.1:{port}",
             f"--num_processes={processes}", f"--process_id={i}"] for i in range(processes)]


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(USAGE + "\n\n" + __doc__)
        return 0
    try:
        own, arguments = split_arguments(argv[1:])
    except ValueError as error:
        print(f"error: {error}\n{USAGE}", file=sys.stderr)
        return 2
    env = environment(own["devices_per_process"], dict(os.environ))
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, env=env, start_new_session=True)
             for cmd in commands(own["processes"], own["port"] or free_port(), arguments)]

    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    ended: dict[int, tuple[int, float]] = {}
    while len(ended) < len(procs):
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                code = proc.returncode     # -N: killed by signal N, as a shell reports it
                ended[i] = (code if code >= 0 else 128 - code, time.monotonic() - start)
        time.sleep(0.05)
    for i in range(len(procs)):
        status, seconds = ended[i]
        print(f"launch_local: process {i} of {len(procs)} exited with status {status} after "
              f"{seconds:.1f} s", file=sys.stderr, flush=True)
    return next((ended[i][0] for i in range(len(procs)) if ended[i][0]), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
