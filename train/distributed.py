"""Several processes under JAX's multi-controller runtime (``--multihost``):
how they start, and how they end together, each with one line.

Start (:func:`launch`, then :class:`Peers`): ``jax.distributed.initialize``
gets

  * on a TPU VM pod or under SLURM, nothing: JAX reads the TPU metadata or
    SLURM's variables;
  * otherwise the coordinator's ``host:port``, the process count and this
    process's id, from the flags ``--coordinator``, ``--num_processes`` and
    ``--process_id`` or from the variables ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (a flag wins over its
    variable; jax 0.10 itself reads only the first variable).

End: the processes share the key-value store of the runtime's coordination
service (held by process 0). A process that ends with a status other than 0
(an error, a signal, a bug) first writes its last line and status there
(``cosjax/stopped/I``); a thread in every other process reads that folder
twice a second and ends its own process with ``process I of N stopped:
LINE`` and the same status. Process 0 waits (at most ``ACK_WAIT_S``) for the
others to have read the line before it ends, since its end takes the store
with it. A process that dies without a word (SIGKILL, a crash, a lost host)
is noticed by the runtime: at once when it is process 0 (the service is
gone), after at most ``peer_timeout`` seconds without heartbeats otherwise.
The runtime then aborts every survivor; a SIGABRT handler turns that abort
into the one line and exit status 1. A collective that fails because its
peer is gone waits for that verdict.

The runtime's own C-level output (gRPC and XLA log lines, gloo's ``[Gloo]
Rank K is connected ...`` on stdout, an abort's stack trace) goes to a log
file in the temporary directory, named in the line when it may tell more
(exit status 1) and deleted otherwise; Python's output (results on stdout,
progress and the one-line messages on stderr) stays where it was. With ``verbose`` the
runtime's stderr is left alone and its stdout goes to stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping

POLL_S = 0.5          # how often a process looks for a stopped peer
ACK_WAIT_S = 5.0      # how long process 0 waits for the others to read its line
PREFIX = "cosjax/"
ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Launch:
    """What ``jax.distributed.initialize`` is given (None: found by JAX from
    the TPU metadata or SLURM), and the heartbeat timeout in seconds."""
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    peer_timeout: int = 30


class LaunchError(ValueError):
    """Settings of ``--multihost`` that cannot work (one line, exit 2)."""


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"{name}={text!r} is not an integer") from None


def launch(coordinator: str | None, num_processes: int | None, process_id: int | None,
           peer_timeout: int, environ: Mapping[str, str]) -> Launch:
    """The launch settings: each flag given, else its variable of ``environ``
    (``ENVIRONMENT``), else None; ``LaunchError`` on a value that cannot work."""
    if coordinator is None and environ.get(ENVIRONMENT[0]):
        coordinator = environ[ENVIRONMENT[0]]
    if num_processes is None and environ.get(ENVIRONMENT[1]):
        num_processes = _integer(environ[ENVIRONMENT[1]], ENVIRONMENT[1])
    if process_id is None and environ.get(ENVIRONMENT[2]):
        process_id = _integer(environ[ENVIRONMENT[2]], ENVIRONMENT[2])
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise LaunchError(f"coordinator {coordinator!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
    if num_processes is not None and num_processes < 1:
        raise LaunchError(f"num_processes={num_processes} must be at least 1")
    if process_id is not None and (process_id < 0 or (num_processes is not None
                                                       and process_id >= num_processes)):
        raise LaunchError(f"process_id={process_id} must be in 0 .. num_processes - 1"
                          + (f" = {num_processes - 1}" if num_processes is not None else ""))
    if peer_timeout < 2:
        raise LaunchError(f"peer_timeout={peer_timeout} must be at least 2 seconds")
    return Launch(coordinator, num_processes, process_id, peer_timeout)


def _initialize(settings: Launch) -> None:
    """``jax.distributed.initialize`` with ``settings``; ``LaunchError`` with
    one line when it refuses them (no cluster found, a bad address)."""
    import jax

    try:
        jax.distributed.initialize(coordinator_address=settings.coordinator,
                                   num_processes=settings.num_processes,
                                   process_id=settings.process_id,
                                   heartbeat_timeout_seconds=settings.peer_timeout)
    except (ValueError, RuntimeError, TypeError) as error:
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        raise LaunchError(f"--multihost: {detail}; on a TPU VM pod or under SLURM nothing needs "
                          f"setting, elsewhere give --coordinator=HOST:PORT, --num_processes=N "
                          f"and --process_id=I (or {', '.join(ENVIRONMENT)})") from error


def _client():
    """The coordination service's client of this process (jax keeps it in a
    private module; jax 0.10 offers no public way to its key-value store)."""
    from jax._src import distributed

    return distributed.global_state.client


class _LastLine:
    """A text stream that remembers the last line it was given that starts
    with ``error:`` or ``interrupted:`` (the one-line end of a job)."""

    def __init__(self, stream):
        self.stream = stream
        self.last = ""
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith(("error: ", "interrupted: ")):
                self.last = line
        self.pending = self.pending[-4096:]
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Peers:
    """``peers = Peers(settings, verbose); peers.start(); status =
    peers.run(job)``: redirects the runtime's output, initializes
    ``jax.distributed``, watches the other processes, and ends this one with
    one line when one of them stops (see the module's docstring)."""

    def __init__(self, settings: Launch, verbose: bool):
        self.settings, self.verbose = settings, verbose
        self.index = settings.process_id if settings.process_id is not None else 0
        self.count = settings.num_processes or 1
        self.ending = threading.Lock()    # held by whichever path ends the process
        self.log_path = ""
        self.terminal = None              # the original stderr, as a raw fd
        self._abort_handler = None        # the ctypes handler, kept alive
        self.watching = threading.Event()
        self.watcher = None

    # --- start ----------------------------------------------------------------------------

    def start(self) -> None:
        """Redirects the runtime's output, initializes ``jax.distributed``
        (``LaunchError`` when it refuses the settings) and starts watching."""
        self._redirect()
        self._catch_abort()
        _initialize(self.settings)
        import jax
        from jax.experimental import multihost_utils

        self.index, self.count = jax.process_index(), jax.process_count()
        # The collectives' connections (gloo on the CPU) are made by the first
        # collective, which waits only 30 s for every process: make them now,
        # while the processes are in step, not after compiles of unequal length.
        multihost_utils.sync_global_devices("cosjax: connect")
        self.watching.set()
        self.watcher = threading.Thread(target=self._watch, name="cosjax-peers", daemon=True)
        self.watcher.start()
        atexit.register(self._stop_watching)   # before the interpreter tears the client down

    def _stop_watching(self) -> None:
        self.watching.clear()
        if self.watcher is not None:
            self.watcher.join(timeout=POLL_S + 5)

    def _redirect(self) -> None:
        """C-level stdout and stderr to the log (stdout to stderr when
        verbose); ``sys.stdout``/``sys.stderr`` keep the original streams."""
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = os.dup(1), os.dup(2)
        self.terminal = err
        if self.verbose:
            os.dup2(2, 1)
        else:
            fd, self.log_path = tempfile.mkstemp(
                prefix=f"cosjax-{socket.gethostname()}-{os.getpid()}-", suffix=".log")
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        sys.stdout = os.fdopen(out, "w", buffering=1, encoding=sys.stdout.encoding,
                               errors=sys.stdout.errors)
        sys.stderr = _LastLine(os.fdopen(err, "w", buffering=1, encoding=sys.stderr.encoding,
                                         errors="backslashreplace"))

    def _catch_abort(self) -> None:
        """A SIGABRT handler: the runtime aborts the process when it loses a
        peer or the coordinator; say so in one line and exit 1 instead."""
        kind = ctypes.CFUNCTYPE(None, ctypes.c_int)
        self._abort_handler = kind(self._on_abort)
        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, kind]
        libc.signal(signal.SIGABRT, self._abort_handler)

    # --- the ends -------------------------------------------------------------------------

    def _say(self, line: str, log: bool = True) -> None:
        """Prints ``line`` on the original stderr, naming the runtime's log
        (``log``) or deleting it."""
        where = f" (runtime log: {self.log_path})" if log and self.log_path else ""
        os.write(self.terminal, f"{line}{where}\n".encode(errors="backslashreplace"))
        if not log and self.log_path:
            with contextlib.suppress(OSError):
                os.remove(self.log_path)

    def _on_abort(self, signum: int) -> None:
        if not self.ending.acquire(blocking=False):
            time.sleep(ACK_WAIT_S + 2)   # another path is ending the process: let it
            os._exit(1)
        sys.stdout.flush()
        self._say(self._verdict())
        os._exit(1)

    def _verdict(self) -> str:
        """What the runtime's last log lines say has happened, as one line."""
        text = ""
        if self.log_path:
            with open(self.log_path, errors="replace") as log:
                text = log.read()[-20000:]
        silent = (re.findall(r"Task (\d+) heartbeat timeout", text)
                  or re.findall(r"stopped sending heartbeats\):\s*(\d+)", text))
        if "RegisterTask" in text:
            return (f"process {self.index} of {self.count} stopped: it could not join the "
                    f"coordinator at {self.settings.coordinator or '(found from the cluster)'}: "
                    f"are all {self.count} processes started, with the same coordinator?")
        if silent:
            return (f"process {silent[-1]} of {self.count} stopped: no heartbeat for "
                    f"{self.settings.peer_timeout} s (killed, crashed or cut off); process "
                    f"{self.index} stops too")
        if self.index != 0 and ("coordination service" in text or not self.log_path):
            return (f"process 0 of {self.count} stopped: the coordinator it holds cannot be "
                    f"reached (killed, crashed or cut off); process {self.index} stops too")
        return (f"process {self.index} of {self.count} stopped: the JAX distributed runtime "
                f"aborted it (a peer stopped or cannot be reached)")

    def _watch(self) -> None:
        """Ends this process when another one has written its last line."""
        client = _client()
        while self.watching.is_set():
            time.sleep(POLL_S)
            try:
                entries = client.key_value_dir_get(f"{PREFIX}stopped/")
            except Exception:            # the service is gone: the runtime aborts us
                continue
            others = sorted((k, v) for k, v in entries if k.rsplit("/", 1)[-1] != str(self.index))
            if not others or not self.ending.acquire(blocking=False):
                continue
            key, value = others[0]
            status, _, line = value.partition(" ")
            peer = key.rsplit("/", 1)[-1]
            self._mark_ended(client)
            sys.stdout.flush()
            self._say(f"process {peer} of {self.count} stopped: {line}", log=False)
            self._wait_for_others(client)
            os._exit(int(status))

    def _mark_ended(self, client) -> None:
        with contextlib.suppress(Exception):
            client.key_value_set(f"{PREFIX}ended/{self.index}", "1")

    def _wait_for_others(self, client) -> None:
        """Process 0: until every other process has ended or read a line
        (at most ``ACK_WAIT_S``), since the store ends with process 0."""
        if self.index != 0 or self.count == 1:
            return
        deadline = time.monotonic() + ACK_WAIT_S
        while time.monotonic() < deadline:
            try:
                done = {k.rsplit("/", 1)[-1] for k, _ in client.key_value_dir_get(f"{PREFIX}ended/")}
            except Exception:
                return
            if len(done - {str(self.index)}) >= self.count - 1:
                return
            time.sleep(0.05)

    def stop(self, status: int, line: str) -> None:
        """Writes this process's last line for the others and waits for them
        (process 0); the caller then exits with ``status``."""
        self.ending.acquire()
        client = _client()
        try:
            client.key_value_set(f"{PREFIX}stopped/{self.index}", f"{status} {line}")
        except Exception:
            return
        self._mark_ended(client)
        self._wait_for_others(client)

    # --- the job --------------------------------------------------------------------------

    def run(self, job: Callable[[], int]) -> int:
        """Runs ``job`` (returns an exit status); on a status other than 0 or
        an exception, tells the others first."""
        try:
            status = job()
        except Exception as error:
            return self._failed(error)
        if status:
            line = sys.stderr.last if isinstance(sys.stderr, _LastLine) else ""
            self.stop(status, line or f"exited with status {status}")
        return status

    def _failed(self, error: Exception) -> int:
        """An exception out of the job: when a collective lost its peer, wait
        for the runtime's verdict; else a bug, with its traceback."""
        detail = (str(error).strip().splitlines() or [""])[0]
        if re.search(r"[Gg]loo|Connection (reset|closed|refused)|Socket closed", detail):
            deadline = time.monotonic() + self.settings.peer_timeout + 10
            while time.monotonic() < deadline:   # the watcher or the abort handler ends us
                time.sleep(0.1)
            if not self.ending.acquire(blocking=False):
                time.sleep(60)
            print(f"process {self.index} of {self.count} stopped: a collective failed "
                  f"({type(error).__name__}: {detail[:300]}); a peer has stopped or cannot be "
                  f"reached", file=sys.stderr, flush=True)
            if self.verbose:
                traceback.print_exception(error, file=sys.stderr)
            return 1
        traceback.print_exception(error, file=sys.stderr)
        sys.stderr.flush()
        self.stop(1, f"{type(error).__name__}: {detail[:300]} (a bug; its traceback is on "
                     f"process {self.index}'s stderr)")
        return 1

    def done(self, status: int) -> None:
        """After the job: on 0, stops watching and leaves the runtime with the
        others (a barrier). The log is deleted unless the status is 1 (a bug
        or a lost peer: the log may tell more)."""
        if status == 0:
            import jax

            self._stop_watching()
            jax.distributed.shutdown()
        if status != 1 and self.log_path:
            with contextlib.suppress(OSError):
                os.remove(self.log_path)
