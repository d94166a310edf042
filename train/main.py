"""Entry point: ``python -m train.main --config=configs/cifar100.py --workdir=DIR``.

Parses the flags and calls ``train.job.main``: train a QCFS ANN with the
reference recipe (or resume it), convert it to an SNN, calibrate its offset
spikes (COS) and report accuracy at every time step. ``--config.mode=eval``
evaluates the checkpoint in the workdir (or ``--config.init_from=model.pth``).

Exit status: 0 done; 2 a mistake the user can fix (one line ``error: ...``
on stderr: flags, config, workdir, data, checkpoint); 143 / 130 stopped by
SIGTERM / SIGINT (one line ``interrupted: ...``; training checkpoints first).
``--verbose`` (or ``COSJAX_VERBOSE=1``) prints, below the line, the traceback
of the error and of the causes it was raised from.
"""

from __future__ import annotations

import difflib
import os
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from train.errors import print_causes

USAGE = "usage: python -m train.main --config=configs/NAME.py --workdir=DIR [--config.FIELD=VALUE ...]"


class FlagError(Exception):
    """A command line that cannot be parsed (reported as one line, exit 2)."""


def _flag_values(argv: list[str] | None = None) -> flags.FlagValues:
    """The job's flags on a fresh ``FlagValues`` (``argv``: the command line the
    config flag reads its overrides from)."""
    values = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results (on several "
                        "hosts: a directory every host sees, e.g. NFS or a gcsfuse mount).",
                        flag_values=values)
    flags.DEFINE_bool("multihost", False, "One process of several (jax.distributed): on TPU VM "
                      "pods and under SLURM nothing else to set; elsewhere --coordinator, "
                      "--num_processes, --process_id (docs/devices.md).", flag_values=values)
    flags.DEFINE_string("coordinator", None, "--multihost: HOST:PORT of process 0's coordination "
                        "service (else JAX_COORDINATOR_ADDRESS); implies --multihost.",
                        flag_values=values)
    flags.DEFINE_integer("num_processes", None, "--multihost: the number of processes (else "
                         "JAX_NUM_PROCESSES); implies --multihost.", flag_values=values)
    flags.DEFINE_integer("process_id", None, "--multihost: this process's id, 0 .. N-1 (else "
                         "JAX_PROCESS_ID); implies --multihost.", flag_values=values)
    flags.DEFINE_integer("peer_timeout", 30, "--multihost: seconds without heartbeats after which "
                         "a process counts as dead and the others stop.", flag_values=values)
    flags.DEFINE_bool("verbose", False, "After a one-line error, also print its traceback and the "
                      "chain of causes (or set COSJAX_VERBOSE=1).", flag_values=values)
    config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).",
                                    flag_values=values, lock_config=True, sys_argv=argv)
    return values


def _fields(config, prefix: str = "") -> list[str]:
    """Every dotted field name of a config."""
    names = []
    for key, value in config.items():
        names.append(prefix + key)
        if hasattr(value, "items"):
            names += _fields(value, prefix + key + ".")
    return names


def load_config_file(path: str):
    """``get_config()`` of a config file, without overrides; ``FlagError``
    when the file is missing or does not load."""
    import importlib.util

    if not os.path.isfile(path):
        raise FlagError(f"config file {path!r} not found")
    try:
        spec = importlib.util.spec_from_file_location("_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as error:   # whatever the file's own code raises
        detail = str(error).strip().splitlines()
        raise FlagError(f"cannot load config file {path!r}: {type(error).__name__}"
                        + (f": {detail[-1]}" if detail else "")) from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise FlagError(f"config file {path!r}: get_config() returned {type(config).__name__}; "
                        f"it must return the ml_collections.ConfigDict of configs/default.py "
                        f"with its changes")
    return config


def last_overrides(argv: list[str]) -> list[str]:
    """``argv`` with only the last of repeated ``--config.FIELD`` overrides
    (``--config.FIELD=VALUE`` or ``--config.FIELD VALUE``), so that the last
    one wins for every field: absl would append a repeated tuple override to
    the earlier ones."""
    items: list[tuple[str | None, list[str]]] = []    # (field or None, its tokens)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if i and arg.startswith("--config.") and "=" not in arg and i + 1 < len(argv) \
                and not argv[i + 1].startswith("-"):
            items.append((arg[len("--config."):], argv[i:i + 2]))
            i += 2
            continue
        field = arg[len("--config."):].split("=", 1)[0] if i and arg.startswith("--config.") else None
        items.append((field, [arg]))
        i += 1
    last = {field: n for n, (field, _) in enumerate(items) if field is not None}
    return [token for n, (field, tokens) in enumerate(items)
            if field is None or last[field] == n for token in tokens]


def _explain(argv: list[str], error: Exception, config) -> str:
    """One line saying what is wrong with the command line."""
    known = _fields(config)
    for arg in argv[1:]:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in known:
                close = difflib.get_close_matches(field, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                return f"unknown config field {field!r}{hint}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _verbose_from_environment() -> bool:
    return os.environ.get("COSJAX_VERBOSE", "") not in ("", "0")


def parse(argv: list[str]):
    """``(config, workdir, multihost, verbose)`` from the command line
    (``multihost``: a ``train.distributed.Launch``, or None for one
    process); ``FlagError`` with one line on any mistake. A field given
    several times takes its last value."""
    argv = last_overrides(argv)
    paths = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if not paths or not paths[-1]:
        raise FlagError("--config is required, e.g. --config=configs/quickstart.py")
    defaults = load_config_file(paths[-1])
    values = _flag_values(list(argv))
    try:
        rest = values(argv)
        config = values.config
        config.keys()    # the flag loads lazily: make it load (and fail) here
    except Exception as error:   # absl, ml_collections and the config file raise many types
        raise FlagError(_explain(argv, error, defaults)) from error
    if len(rest) > 1:
        raise FlagError(f"unexpected arguments: {' '.join(rest[1:])}")
    if values.workdir is None:
        raise FlagError("--workdir is required")
    verbose = values.verbose or _verbose_from_environment()
    return config, values.workdir, _launch(values), verbose


def _launch(values: flags.FlagValues):
    """The ``--multihost`` settings (``train.distributed.launch``) or None."""
    from train import distributed

    explicit = (values.coordinator, values.num_processes, values.process_id)
    if not values.multihost and all(v is None for v in explicit):
        return None
    try:
        return distributed.launch(*explicit, values.peer_timeout, os.environ)
    except distributed.LaunchError as error:
        raise FlagError(str(error)) from error


def main(argv: list[str]) -> int:
    """Parses ``argv`` and runs the job; returns the exit status."""
    if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv[1:]):
        print(USAGE + "\n\n" + _flag_values().get_help())
        return 0
    try:
        config, workdir, multihost, verbose = parse(argv)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if _verbose_from_environment() or "--verbose" in argv:
            print_causes(error)
        return 2
    from absl import logging

    flags.FLAGS.mark_as_parsed()               # absl logging: no "before flag parsing" notice
    logging.set_verbosity(logging.WARNING)     # keep orbax/grain INFO lines out of the way
    if multihost is None:
        from train import job

        return job.main(config, workdir, verbose=verbose)
    from train import distributed

    peers = distributed.Peers(multihost, verbose)
    try:
        peers.start()
    except distributed.LaunchError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if verbose:
            print_causes(error)
        peers.done(2)
        return 2

    def run_job() -> int:
        from train import job

        return job.main(config, workdir, verbose=verbose)

    status = peers.run(run_job)
    peers.done(status)
    return status


def _exit(status: int) -> None:
    """Exits with ``status``. After an error, skips the interpreter's shutdown,
    where background threads of orbax/tensorstore whose work was abandoned
    print tracebacks ("Event loop is closed") below the one-line message;
    every file the job wrote is closed by then."""
    if status == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except KeyboardInterrupt:                  # before the job's handlers are installed
        print("interrupted: SIGINT received; stopped", file=sys.stderr, flush=True)
        code = 130
    _exit(code)
