"""Several processes (``--multihost``, ``train/distributed.py``): the launch
settings, and real runs of 2 processes on this machine (jax.distributed, gloo
collectives on the CPU, 1 CPU device each, one shared workdir), started as
``benchmarks/launch_local.py`` starts them: a run equal to 1 process with 2
devices, a killed peer, a peer refused by the workdir lock, SIGTERM at the end
of training and during evaluation.

The runs use a smaller tiny config (``MINI``: 11 steps, 40 test images); the
process tests are marked slow.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks import launch_local

pytestmark = pytest.mark.pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = ("--config=tests/configs/tiny.py", "--config.optim.epochs=1", "--config.optim.batch_size=128",
        "--config.snn.max_eval_examples=40", "--config.snn.time_steps=(1,2)",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=5",
        "--config.dataset.augment=cifar", "--config.dataset.cutout=4")
PEER_TIMEOUT = 10
STOP_BOUND_S = PEER_TIMEOUT + 20     # a killed peer: the survivor ends within this (loaded CI)


# --- the launch settings -------------------------------------------------------------------

def test_flags_and_variables_give_the_launch():
    from train import distributed

    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed.launch(None, None, None, 30, env) == distributed.Launch("10.0.0.1:1234", 4, 3, 30)
    assert distributed.launch("h:1", 2, 0, 9, env) == distributed.Launch("h:1", 2, 0, 9)
    assert distributed.launch(None, None, None, 30, {}) == distributed.Launch()   # TPU pod, SLURM


@pytest.mark.parametrize("given, fragment", [
    ((None, None, None, {"JAX_NUM_PROCESSES": "two"}), "JAX_NUM_PROCESSES='two' is not an integer"),
    (("10.0.0.1", 2, 0, {}), "coordinator '10.0.0.1' is not HOST:PORT"),
    (("h:1", 2, 2, {}), "process_id=2 must be in 0 .. num_processes - 1 = 1"),
    (("h:1", 0, 0, {}), "num_processes=0 must be at least 1"),
])
def test_bad_launch_settings(given, fragment):
    from train import distributed

    *flags, env = given
    with pytest.raises(distributed.LaunchError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        distributed.launch(*flags, 30, env)


def test_command_line_reads_the_variables(monkeypatch):
    from train import distributed, main

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:23456")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    argv = ["train.main", "--config=tests/configs/tiny.py", "--workdir=W"]
    assert main.parse(argv)[2] is None                          # no --multihost: one process
    launch = main.parse(argv + ["--multihost"])[2]
    assert launch == distributed.Launch("127.0.0.1:23456", 2, 1, 30)
    launch = main.parse(argv + ["--process_id=0", "--peer_timeout=12"])[2]   # a flag implies it
    assert launch == distributed.Launch("127.0.0.1:23456", 2, 0, 12)


def test_bad_launch_flag_is_one_line(capsys):
    from train import main

    status = main.main(["train.main", "--config=tests/configs/tiny.py", "--workdir=W",
                        "--num_processes=2", "--process_id=2", "--coordinator=h:1"])
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == ("error: process_id=2 must be in 0 .. num_processes - 1"
                                           " = 1")


def test_launcher_arguments():
    own, rest = launch_local.split_arguments(["--processes=3", "--config=c.py", "--workdir=W"])
    assert own == {"processes": 3, "devices_per_process": 1, "port": 0, "launch": "flags"}
    assert rest == ["--config=c.py", "--workdir=W"]
    cmds = launch_local.commands(3, 999, rest)
    assert cmds[2][-3:] == ["--coordinator=127.0.0.1:999", "--num_processes=3", "--process_id=2"]
    env = launch_local.environment(2, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x"})
    assert env["XLA_FLAGS"] == "--x --xla_force_host_platform_device_count=2"
    with pytest.raises(ValueError, match="--processes needs a positive integer"):
        launch_local.split_arguments(["--processes=0"])


# --- real processes --------------------------------------------------------------------------

def _start(workdir, *extra, processes=2, env=None, peer_timeout=30, launch="flags"):
    """The processes of a ``launch_local --launch=<launch>`` run, started one
    by one (their stdout and stderr to files in ``workdir``'s parent)."""
    port = launch_local.free_port(launch_local.SLURM_PORTS if launch == "slurm" else None)
    environ = launch_local.environment(1, {**os.environ, **(env or {})})
    args = [*MINI, f"--workdir={workdir}", f"--peer_timeout={peer_timeout}", *extra]
    procs = []
    for i, cmd in enumerate(launch_local.commands(processes, port, args, launch)):
        out = open(f"{workdir}.out{i}", "w")
        err = open(f"{workdir}.err{i}", "w")
        variables = launch_local.process_variables(launch, processes, port, i)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**environ, **variables}, stdout=out,
                                      stderr=err))
    return procs


def _finish(procs, workdir, timeout=2400):
    """``[(status, stdout, stderr, seconds from now)]`` of each process."""
    start, ends = time.time(), {}
    while len(ends) < len(procs) and time.time() - start < timeout:
        for i, proc in enumerate(procs):
            if i not in ends and proc.poll() is not None:
                ends[i] = time.time() - start
        time.sleep(0.05)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    assert len(ends) == len(procs), "timed out"
    ends = [ends[i] for i in range(len(procs))]
    return [(p.returncode, open(f"{workdir}.out{i}").read(), open(f"{workdir}.err{i}").read(), t)
            for i, (p, t) in enumerate(zip(procs, ends, strict=True))]


def _wait_for(predicate, procs, timeout=2400):
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        assert all(p.poll() is None for p in procs), "a process ended early"
        time.sleep(0.05)
    assert predicate(), "timed out"


def _logged(workdir, rows=1):
    path = workdir / "metrics.jsonl"
    return path.exists() and len(path.read_text().splitlines()) >= rows


def _last_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _remove_logs(text):
    """Deletes the runtime logs a failed run's lines name."""
    for path in re.findall(r"\(runtime log: (\S+)\)", text):
        if os.path.exists(path):
            os.remove(path)


def _losses(workdir):
    return [json.loads(line)["train_loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A finished 2-process run of ``MINI`` and its processes' outputs."""
    workdir = tmp_path_factory.mktemp("two") / "run"
    ends = _finish(_start(workdir), workdir)
    for status, _, err, _ in ends:
        assert status == 0, err[-3000:]
    return workdir, ends


@pytest.mark.slow
def test_two_processes_equal_one_process_with_two_devices(two_process_run, tmp_path):
    """Same examples and augmentation per step (keyed by global example):
    the loss curve and the accuracies of 2 processes x 1 device equal those
    of 1 process x 2 devices."""
    workdir, ends = two_process_run
    (_, out0, err0, _), (_, out1, err1, _) = ends
    assert "ANN accuracy" in out0 and out1 == ""          # process 1 prints nothing on stdout
    assert "[Gloo]" not in out0 + out1                    # the runtime's C-level lines: in its log
    assert "Traceback" not in err0 + err1
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == 2
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 12))                    # one writer: each step once
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "train.main", *MINI, f"--workdir={single}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=2400,
                          env={**os.environ, "JAX_PLATFORMS": "cpu",
                               "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Measured: the 11 losses are bit-identical (2026-12-07, jax 0.10.2, CPU).
    np.testing.assert_array_equal(_losses(workdir), _losses(single))
    ours = json.loads((workdir / "results.json").read_text())
    theirs = json.loads((single / "results.json").read_text())
    assert ours["ann_accuracy"] == theirs["ann_accuracy"]
    assert ours["snn_accuracy"] == theirs["snn_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["env", "slurm"])
def test_variables_launch_equals_the_flags_launch(two_process_run, tmp_path, launch):
    """``--multihost`` with JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/
    JAX_PROCESS_ID, or with the variables srun sets (SLURM emulated on
    localhost; JAX reads them): the same run as with the flags, loss for loss."""
    workdir = tmp_path / "run"
    ends = _finish(_start(workdir, launch=launch), workdir)
    for status, _, err, _ in ends:
        assert status == 0, err[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["num_processes"] == 2 and results["num_devices"] == 2
    np.testing.assert_array_equal(_losses(workdir), _losses(two_process_run[0]))


def test_launcher_variables():
    assert launch_local.process_variables("env", 2, 999, 1) == {
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:999", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    slurm = launch_local.process_variables("slurm", 3, 61440 + 17, 2)
    assert (slurm["SLURM_JOB_ID"], slurm["SLURM_NTASKS"], slurm["SLURM_PROCID"]) == ("17", "3", "2")
    assert launch_local.commands(2, 999, ["--workdir=W"], "slurm")[1][-2:] == ["--workdir=W",
                                                                              "--multihost"]
    with pytest.raises(ValueError, match="needs a port in 61440-65535"):
        launch_local.process_variables("slurm", 2, 999, 0)
    with pytest.raises(ValueError, match="--launch must be one of flags, env, slurm"):
        launch_local.split_arguments(["--launch=mpi"])


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killed_peer_ends_the_other_with_one_line(tmp_path, victim):
    workdir = tmp_path / "run"
    procs = _start(workdir, peer_timeout=PEER_TIMEOUT)
    _wait_for(lambda: "running on" in open(f"{workdir}.out0").read(), procs)   # all connected
    time.sleep(1)
    procs[victim].kill()
    killed = time.time()
    survivor = procs[1 - victim]
    survivor.wait(timeout=STOP_BOUND_S + 60)
    seconds = time.time() - killed
    err = open(f"{workdir}.err{1 - victim}").read()
    print(f"process {1 - victim} ended {seconds:.1f} s after process {victim} was killed")
    assert survivor.returncode == 1, err[-3000:]
    assert seconds < STOP_BOUND_S
    assert _last_line(err).startswith(f"process {victim} of 2 stopped: "), err[-3000:]
    assert "Traceback" not in err and "Check failure" not in err
    assert not (workdir / "results.json").exists()
    _remove_logs(err)


@pytest.mark.slow
def test_lock_refused_ends_both_with_the_reason(tmp_path):
    from train import workdir as workdirs

    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from train import workdir as w\n"
         "with w.Lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)", str(workdir)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        ends = _finish(_start(workdir), workdir)
    finally:
        holder.kill()
        holder.wait()
    (s0, _, err0, t0), (s1, _, err1, t1) = ends
    assert s0 == 2 and _last_line(err0).startswith(f"error: workdir {workdir} is in use by pid "
                                                   f"{holder.pid}"), err0[-3000:]
    assert s1 == 2 and _last_line(err1).startswith(f"process 0 of 2 stopped: error: workdir "
                                                   f"{workdir} is in use"), err1[-3000:]
    assert "Traceback" not in err0 + err1
    print(f"process 0 ended after {t0:.1f} s, process 1 after {t1:.1f} s")
    assert abs(t1 - t0) < 10
    assert not {"results.json", "metrics.jsonl"} & set(os.listdir(workdir))
    assert f"pid {holder.pid}" in (workdir / workdirs.LOCK_NAME).read_text()


@pytest.mark.slow
def test_sigterm_to_one_process_in_evaluation(two_process_run, tmp_path):
    """A finished training run re-evaluating: SIGTERM to process 1 ends both
    with 143, no results; the same command then writes them."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(two_process_run[0], workdir)
    os.remove(workdir / "results.json")
    procs = _start(workdir)
    _wait_for(lambda: "SNN" in open(f"{workdir}.err0").read(), procs)
    procs[1].send_signal(signal.SIGTERM)
    sent = time.time()
    ends = _finish(procs, workdir)
    (s0, _, err0, t0), (s1, _, err1, t1) = ends
    print(f"processes ended {t0:.1f} s and {t1:.1f} s after the signal")
    assert s1 == 143 and _last_line(err1).startswith("interrupted: SIGTERM received"), err1[-3000:]
    assert s0 == 143 and _last_line(err0).startswith("process 1 of 2 stopped: interrupted: SIGTERM"), \
        err0[-3000:]
    assert time.time() - sent < 30
    assert not (workdir / "results.json").exists()
    again = _finish(_start(workdir), workdir)
    assert [e[0] for e in again] == [0, 0], again[0][2][-3000:]
    assert "train:" not in again[0][2]
    assert json.loads((workdir / "results.json").read_text())["snn_accuracy"] == json.loads(
        (two_process_run[0] / "results.json").read_text())["snn_accuracy"]
