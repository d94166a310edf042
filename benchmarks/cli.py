"""Command-line parsing shared by the absl-flag benchmarks: ``--help`` prints
the usage and the flags, a bad flag one line ``error: ...`` (exit 2), never a
traceback."""

from __future__ import annotations

import sys

from absl import flags

__all__ = ["parse", "set_fields"]


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


def set_fields(config, items: list[str]) -> None:
    """Applies ``FIELD=VALUE`` overrides (``--set`` of argparse benchmarks) to
    an ml_collections config, each value converted to its field's type
    (tuples from ``(1,2)``-style text); a bad one exits 2 with one line."""
    import ast

    for item in items:
        field, sep, text = item.partition("=")
        try:
            if not sep:
                raise ValueError("expected FIELD=VALUE")
            node = config
            *path, leaf = field.split(".")
            for part in path:
                node = node[part]
            old = node[leaf]
            if isinstance(old, bool):
                value = {"True": True, "False": False}[text]
            elif isinstance(old, (tuple, list)):
                value = tuple(ast.literal_eval(text))
            else:
                value = type(old)(text)
            node[leaf] = value
        except (KeyError, ValueError, TypeError, SyntaxError, AttributeError) as error:
            print(f"error: --set {item!r}: {error}", file=sys.stderr)
            raise SystemExit(2) from error
