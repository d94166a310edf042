"""SIGTERM and SIGINT: stop at a step boundary with a checkpoint.

TPU VMs, Kubernetes and SLURM send SIGTERM before they stop a job; Ctrl-C
sends SIGINT. While training, the first signal only sets a flag: the
trainer finishes its current step, saves a checkpoint at that step and
raises ``Interrupted`` (``train.training_loop.fit``); a signal during the
last step or the final checkpoint raises it once that checkpoint is written,
before any evaluation. Outside training (loading, compiling, evaluating) and
on a second signal, ``Interrupted`` is raised at once. ``train.job.main``
prints one line and exits with 128 + the signal number (143 for SIGTERM, 130
for SIGINT).

Several hosts must save the same step: ``requested()`` takes the maximum of
every process's flag (``multihost_utils.process_allgather``) after every
step, so all processes see the signal at the same step, even when it
reached only some of them. On one process it reads the local flag.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import jax
import numpy as np

from train.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """``with StopSignals() as stop:`` installs the handlers (restored on exit);
    ``with stop.deferred():`` marks the training loop; ``stop.requested()``."""

    def __init__(self):
        self.signum = 0
        self.defer = False
        self.previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self    # only the main thread may install handlers: none then
        for signum in SIGNALS:
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.defer and not self.signum:
            self.signum = signum
            return
        raise Interrupted(signum, f"{name} received; stopped (no new results written); rerun "
                                  f"the same command to continue")

    @contextmanager
    def deferred(self):
        """Within: a first signal waits for ``requested()`` instead of raising.
        On leaving without an exception, a signal the loop did not stop for
        (one during the last step or the final checkpoint, which the loop
        finishes) raises ``Interrupted``, on every process alike."""
        self.defer = True
        try:
            yield
        finally:
            self.defer = False
        signum = self.requested()
        if signum:
            raise Interrupted(signum, f"{signal.Signals(signum).name} at the end of training: the "
                                      f"final checkpoint is saved; rerun the same command to "
                                      f"evaluate")

    def requested(self) -> int:
        """The signal number to stop on (0: keep going), agreed by all processes."""
        if jax.process_count() == 1:
            return self.signum
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.signum, np.int32))
        return int(np.max(flags))
