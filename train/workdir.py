"""The workdir: checked before any work starts, and locked for the run so that
one job writes it at a time.

The lock is ``fcntl.flock`` on ``workdir/.lock``, held on an open file for
the whole run; the file holds the holder's pid, host and start time, so a
second run can name it. The kernel releases the lock when the holder's
process ends in any way (also SIGKILL or a crash), so a lock file left by a
killed run is stale and is taken over by the next run. With several hosts
(``--multihost``) only process 0 takes the lock. On a file system without
locks (some FUSE mounts) the run proceeds with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time

from train.errors import WorkdirError

LOCK_NAME = ".lock"


def prepare(workdir: str) -> str:
    """Creates ``workdir`` if needed and checks that it is a writable
    directory; returns its absolute path."""
    if not isinstance(workdir, str) or not workdir.strip():
        raise WorkdirError("--workdir is empty; give a directory for checkpoints and results")
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"workdir {workdir!r} exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise WorkdirError(f"cannot create workdir {workdir!r}: {error.strerror or error}") from error
    probe = os.path.join(path, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise WorkdirError(f"workdir {workdir!r} is not writable: {error.strerror or error}") from error
    return path


class Lock:
    """``with Lock(workdir): ...`` holds the workdir's lock; raises
    ``WorkdirError`` naming the holder when another process holds it."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.enabled = enabled
        self.file = None

    def __enter__(self) -> Lock:
        if not self.enabled:
            return self
        try:
            self.file = open(self.path, "a+")
        except OSError as error:
            raise WorkdirError(f"cannot open lock file {self.path}: {error.strerror or error}") from error
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                self.file.seek(0)
                holder = self.file.read().strip() or "another process"
                self.file.close()
                self.file = None
                raise WorkdirError(f"workdir {os.path.dirname(self.path)} is in use by {holder}; "
                                   f"wait for that run to end or stop it, or use another "
                                   f"--workdir") from error
            print(f"warning: cannot lock {self.path} ({error.strerror}); make sure no other run "
                  f"uses this workdir", file=sys.stderr, flush=True)
            return self
        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None
