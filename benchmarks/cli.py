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


def _leaves(config, prefix: str = "") -> list[str]:
    """Every dotted field name of a config that holds a value."""
    names = []
    for key, value in config.items():
        names += _leaves(value, f"{prefix}{key}.") if hasattr(value, "items") else [prefix + key]
    return names


def _value(old, text: str):
    """``text`` as a value of ``old``'s type; ``ValueError`` saying what is expected."""
    import ast

    if isinstance(old, bool):
        if text not in ("True", "False"):
            raise ValueError(f"expected True or False, got {text!r}")
        return text == "True"
    if isinstance(old, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"expected a tuple such as (1, 2), got {text!r}") from error
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"expected a tuple such as ({text},), got {text!r}")
        return tuple(value)
    if old is None:
        return text
    try:
        return type(old)(text)
    except (ValueError, TypeError) as error:
        raise ValueError(f"expected a value of type {type(old).__name__}, got {text!r}") from error


def set_fields(config, items: list[str]) -> None:
    """Applies ``FIELD=VALUE`` overrides (``--set`` of argparse benchmarks) to
    an ml_collections config, each value converted to its field's type
    (tuples from ``(1,2)``-style text); a bad one exits 2 with one line
    saying what is wrong (an unknown field with the closest known one)."""
    import difflib

    for item in items:
        field, sep, text = item.partition("=")
        try:
            if not sep:
                raise ValueError("expected FIELD=VALUE")
            known = _leaves(config)
            if field not in known:
                close = difflib.get_close_matches(field, known, n=1)
                raise ValueError(f"unknown config field {field!r}"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
            node = config
            *path, leaf = field.split(".")
            for part in path:
                node = node[part]
            node[leaf] = _value(node[leaf], text)
        except ValueError as error:
            print(f"error: --set {item!r}: {error}", file=sys.stderr)
            raise SystemExit(2) from error


def trained_model(config_path: str, workdir: str, overrides: list[str], examples: int,
                  batch: int):
    """A trained run's model and variables, and its test set as batches.

    ``config_path`` with ``overrides`` (``FIELD=VALUE``) applied, evaluating a
    seeded subset of ``examples`` test images (0: all), in batches of
    ``batch``. Returns ``(config, model, variables, batches)``, each batch
    ``(images [B, H, W, C], labels [B], mask [B])`` as jax arrays (the mask
    is False on the padding of the last batch). A pipeline error (no such
    workdir, a checkpoint of another model) exits 2 with its one line.
    """
    import jax.numpy as jnp

    from benchmarks.aot import _load_config
    from train import architectures, job
    from train.data import batching
    from train.data.sources import load_splits
    from train.errors import PipelineError
    from train.sharding import make_mesh

    config = _load_config(config_path)
    set_fields(config, overrides)
    config.snn.max_eval_examples = examples
    try:
        splits = load_splits(config)
        model = architectures.from_config(config, splits.num_classes)
        variables = job.load_for_eval(config, workdir, model, splits, make_mesh())
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    batches = [(jnp.asarray(b["image"]), jnp.asarray(b["label"]), jnp.asarray(b["mask"]))
               for b in batching.eval_batches(job.test_source(config, splits), config, batch)[1]]
    return config, model, variables, batches
