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
        return lambda num_classes, levels: cosjax.create_model(arch, num_classes, levels)
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


def build(arch: str, num_classes: int, levels: int):
    """The flax module of ``arch`` for ``num_classes`` classes and L = ``levels``."""
    return factory(arch)(num_classes, levels)
