"""The pipeline's error types. Each is a mistake the user can fix (a setting, a
file, a data set, a checkpoint) and stops the job with one line ``error: ...``
and exit status 2 (``train/job.py``); anything else is a bug and keeps its
traceback. Each keeps the exception it was raised from as its cause
(``raise ... from err``): :func:`print_causes` shows them (``--verbose``)."""

from __future__ import annotations

import sys
import traceback


def print_causes(error: BaseException) -> None:
    """Prints ``error``'s traceback and the chain of exceptions it was raised
    from to stderr (what ``--verbose`` adds below the one-line message)."""
    print("traceback and causes (--verbose):", file=sys.stderr)
    traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()


class PipelineError(Exception):
    """Base of the errors reported as one line and exit status 2."""


class ConfigError(PipelineError, ValueError):
    """An invalid setting in the configuration or on the command line."""


class DataError(PipelineError, ValueError):
    """A data set that is missing, unprepared, inconsistent or holds a broken file."""


class CheckpointError(PipelineError, ValueError):
    """A checkpoint that is missing, incompatible or unreadable."""


class WorkdirError(PipelineError, OSError):
    """A workdir that cannot be used: not creatable, not writable, or in use."""


class StorageError(PipelineError, OSError):
    """A write to the workdir failed during the run (a full disk, a read-only
    or vanished directory); the message says what was kept."""


class TrainingError(PipelineError, RuntimeError):
    """Training diverged (a NaN or infinite loss)."""


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the job (after a checkpoint, when training)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum
