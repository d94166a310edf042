"""N processes of ``python -m train.main`` on this machine, as on N hosts:
jax.distributed with gloo collectives on the CPU, D CPU devices per process.

    python -m benchmarks.launch_local --processes=2 --config=configs/quickstart.py --workdir=W

Every argument other than ``--processes=N`` (default 2),
``--devices_per_process=D`` (default 1), ``--port=P`` (default: a free
one) and ``--launch=flags|env|slurm`` goes to ``train.main``, followed by
how each process learns its place (the three launches of docs/devices.md):

* ``flags`` (default): ``--coordinator=127.0.0.1:P --num_processes=N
  --process_id=I``;
* ``env``: ``--multihost`` and the variables ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
* ``slurm``: ``--multihost`` and the variables ``srun`` sets
  (``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST=localhost``, ``SLURM_NTASKS``,
  ``SLURM_PROCID``, ``SLURM_LOCALID``), which JAX itself reads; it derives
  the coordinator's port from the job id (61440 + id mod 4096), so the
  job id is chosen to give a free port in that range (``--port`` must lie
  in it). An emulation of SLURM's variables on one machine, not SLURM.

The processes share the terminal (only
process 0 prints results) and the workdir. SIGTERM and SIGINT to the
launcher go to every process once. At the end one line per process gives
its exit status and seconds; the launcher exits 0 when all did, else with
the first other status in process order. For testing and trying the
several-host code paths; on real hosts start one process per host
(docs/devices.md).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

USAGE = ("usage: python -m benchmarks.launch_local [--processes=N] [--devices_per_process=D] "
         "[--port=P] [--launch=flags|env|slurm] --config=configs/NAME.py --workdir=DIR "
         "[train.main flags ...]")
OWN = ("processes", "devices_per_process", "port")
LAUNCHES = ("flags", "env", "slurm")
SLURM_PORTS = range(65536 - 2 ** 12, 65536)    # JAX's port for a SLURM job: 61440 + id % 4096


def free_port(ports: range | None = None) -> int:
    """A port nobody listens on: any (the system's choice), or one of ``ports``."""
    for port in ([0] if ports is None else random.Random().sample(ports, len(ports))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError(f"no free port in {ports}")


def split_arguments(argv: list[str]) -> tuple[dict, list[str]]:
    """``({processes, devices_per_process, port, launch}, the arguments for
    train.main)``; ``ValueError`` with one line on a bad value of ours."""
    own = {"processes": 2, "devices_per_process": 1, "port": 0, "launch": "flags"}
    rest = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and name == "launch":
            if value not in LAUNCHES:
                raise ValueError(f"--launch must be one of {', '.join(LAUNCHES)}, not {value!r}")
            own[name] = value
        elif arg.startswith("--") and name in OWN:
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


def commands(processes: int, port: int, arguments: list[str],
             launch: str = "flags") -> list[list[str]]:
    """The command line of each process."""
    if launch != "flags":       # the place comes from the environment (process_variables)
        return [[sys.executable, "-m", "train.main", *arguments, "--multihost"]] * processes
    return [[sys.executable, "-m", "train.main", *arguments, f"--coordinator=127.0.0.1:{port}",
             f"--num_processes={processes}", f"--process_id={i}"] for i in range(processes)]


def process_variables(launch: str, processes: int, port: int, index: int) -> dict[str, str]:
    """The environment variables that tell process ``index`` its place."""
    if launch == "env":
        return {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(index)}
    if launch == "slurm":
        if port not in SLURM_PORTS:
            raise ValueError(f"--launch=slurm needs a port in {SLURM_PORTS.start}-"
                             f"{SLURM_PORTS.stop - 1} (JAX derives it from the job id), not {port}")
        return {"SLURM_JOB_ID": str(port - SLURM_PORTS.start), "SLURM_STEP_NODELIST": "localhost",
                "SLURM_NTASKS": str(processes), "SLURM_STEP_NUM_NODES": "1",
                "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index)}
    return {}


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
    launch, n = own["launch"], own["processes"]
    try:
        port = own["port"] or free_port(SLURM_PORTS if launch == "slurm" else None)
        variables = [process_variables(launch, n, port, i) for i in range(n)]
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, env={**env, **variables[i]}, start_new_session=True)
             for i, cmd in enumerate(commands(n, port, arguments, launch))]

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
