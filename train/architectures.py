"""``config.model.arch``: a name of ``cosjax.models.ARCHITECTURES``, or an
import path ``package.module:function`` of a factory ``function(num_classes,
levels) -> flax module`` (e.g. the tiny test networks,
``tests.helpers:tiny_resnet``) without touching the library's registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import cosjax
from cosjax.models import ARCHITECTURES
from train.errors import ConfigError


def factory(arch: str) -> Callable:
    """The model factory ``(num_classes, levels) -> module`` that ``arch`` names."""
    if not isinstance(arch, str):
        raise ConfigError(f"model.arch must be a string, got {arch!r}")
    if arch in ARCHITECTURES:
        return lambda num_classes, levels, **options: cosjax.create_model(arch, num_classes, levels,
                                                                          **options)
    if ":" in arch:
        module_name, _, name = arch.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ConfigError(f"model.arch {arch!r}: cannot import {module_name!r} ({error})") from error
        function = getattr(module, name, None)
        if not callable(function):
            raise ConfigError(f"model.arch {arch!r}: {module_name!r} has no function {name!r}")
        return function
    raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))} "
                      f"(or give a factory as package.module:function)")


def build(arch: str, num_classes: int, levels: int, **options):
    """The flax module of ``arch`` for ``num_classes`` classes and L = ``levels``;
    ``options``: more arguments of the architecture (``model.fastnet``)."""
    return factory(arch)(num_classes, levels, **options)


FASTNET_FIELDS = ("widths", "convs_per_group", "activation", "pool", "dirac_init", "lam_init",
                  "head_scale", "bn_epsilon", "pool_after_activation")
"""The fields of ``config.model.fastnet`` that are arguments of ``cosjax.models.FastNet``."""


def options(config) -> dict:
    """The architecture's arguments beyond class count and L: ``model.fastnet``
    for ``arch='fastnet'``, none for the others."""
    if config.model.arch != "fastnet":
        return {}
    fast = config.model.fastnet
    values = {name: fast[name] for name in FASTNET_FIELDS}
    values["widths"] = tuple(values["widths"])
    return values


def from_config(config, num_classes: int):
    """The flax module that ``config.model`` describes, for ``num_classes`` classes."""
    return build(config.model.arch, num_classes, config.model.levels, **options(config))
