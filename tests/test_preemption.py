"""SIGTERM at any point of one process (``train/preemption.py``): during the
last training step or its checkpoint, and during evaluation, the run stops
with exit 143, keeps its last complete checkpoint, writes no results, and the
same command finishes it without training again. (Two processes:
tests/test_multihost.py; SIGTERM mid-training: tests/test_faults.py.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from train.errors import Interrupted
from train.preemption import StopSignals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = ("--config=tests/configs/tiny.py", "--config.optim.epochs=1", "--config.optim.batch_size=128",
        "--config.snn.max_eval_examples=40", "--config.snn.time_steps=(1,2)",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=5")
LAST = 11     # 1437 training digits / 128


def test_signal_during_the_last_step_stops_after_it():
    """The loop's last stop check came before the signal: leaving the
    deferred block raises (the loop saved its final checkpoint by then)."""
    with StopSignals() as stop:
        with pytest.raises(Interrupted) as caught, stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)     # deferred: only recorded
            assert stop.signum == signal.SIGTERM
        assert caught.value.exit_status == 143
        assert "at the end of training: the final checkpoint is saved" in str(caught.value)
        stop.signum = 0
        with stop.deferred():                        # no signal: nothing raised
            pass


def _run(workdir, until):
    """Starts a MINI run, sends SIGTERM once ``until(workdir, stderr so far)``
    holds, returns (status, stderr, seconds from the signal to the end)."""
    err_path = f"{workdir}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "train.main", *MINI, f"--workdir={workdir}"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 2400
        while proc.poll() is None and time.time() < deadline and not until(
                workdir, open(err_path).read()):
            time.sleep(0.01)
        assert proc.poll() is None, open(err_path).read()[-3000:]
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    return proc.returncode, open(err_path).read(), time.time() - sent


def _rows(workdir):
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _checkpoints(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _finish(workdir):
    proc = subprocess.run([sys.executable, "-m", "train.main", *MINI, f"--workdir={workdir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train:" not in proc.stderr and "resuming" not in proc.stdout   # nothing retrained
    assert (workdir / "results.json").exists()


@pytest.mark.slow
@pytest.mark.pipeline
def test_sigterm_in_the_last_step(tmp_path):
    """The signal lands while the last step's row is logged and its final
    checkpoint written (before: ignored, the run went on to evaluate)."""
    workdir = tmp_path / "run"
    status, err, seconds = _run(workdir, lambda w, _: _rows(w) >= LAST)
    print(f"exit {status} {seconds:.1f} s after SIGTERM")
    assert status == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: SIGTERM"), err[-3000:]
    assert "Traceback" not in err
    assert _checkpoints(workdir)[-1] == LAST
    assert not (workdir / "results.json").exists()
    _finish(workdir)


@pytest.mark.slow
@pytest.mark.pipeline
def test_sigterm_during_evaluation(tmp_path):
    workdir = tmp_path / "run"
    status, err, seconds = _run(workdir, lambda _, e: "SNN " in e)
    print(f"exit {status} {seconds:.1f} s after SIGTERM")
    assert status == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: SIGTERM received; stopped (no new "
                                                   "results written)"), err[-3000:]
    assert _checkpoints(workdir)[-1] == LAST
    assert not (workdir / "results.json").exists()
    assert not [n for n in os.listdir(workdir) if "tmp" in n]
    _finish(workdir)
