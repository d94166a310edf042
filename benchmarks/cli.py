"""Command-line parsing shared by the absl-flag benchmarks: ``--help`` prints
the usage and the flags, a bad flag one line ``error: ...`` (exit 2), never a
traceback."""

from __future__ import annotations

import sys

from absl import flags

__all__ = ["parse"]


def parse(values: flags.FlagValues, argv: list[str], usage: str) -> flags.FlagValues:
    """Parses ``argv`` into ``values``; on ``-h``/``--help`` prints ``usage``
    and the flags and exits 0, on a bad flag or config prints one line and
    exits 2."""
    if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv[1:]):
        print(usage + "\n\n" + values.get_help())
        raise SystemExit(0)
    try:
        values(argv)
        if "config" in values and values["config"].present:
            values.config.keys()     # a config file loads lazily: make it fail here
    except Exception as error:       # absl, ml_collections and config files raise many types
        detail = str(error).strip().splitlines()
        print(f"error: {detail[-1] if detail else type(error).__name__}\n{usage}", file=sys.stderr)
        raise SystemExit(2) from error
    return values
