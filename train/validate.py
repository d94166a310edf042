"""Checks of a run's configuration, before any long work starts."""

from __future__ import annotations

import jax

from cosjax.models import ARCHITECTURES
from train.data import KNOWN_DATASETS

MODES = ("train_eval", "eval", "analyze")
PRECISIONS = ("highest", "high", "default", "float32", "bfloat16", "tensorfloat32")


class ConfigError(ValueError):
    """An invalid setting in the configuration."""


def _int_at_least(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")


def validate_config(config) -> None:
    """Raises ``ConfigError`` naming the first invalid setting."""
    if config.mode not in MODES:
        raise ConfigError(f"unknown mode {config.mode!r}; choose one of {', '.join(MODES)}")
    if config.model.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {config.model.arch!r}; choose one of "
                          f"{', '.join(sorted(ARCHITECTURES))}")
    if config.dataset.name not in KNOWN_DATASETS:
        raise ConfigError(f"unknown data set {config.dataset.name!r}; choose one of "
                          f"{', '.join(KNOWN_DATASETS)}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}")
    _int_at_least("model.levels (L)", config.model.levels, 1)
    times = tuple(config.snn.time_steps) if isinstance(config.snn.time_steps, (tuple, list)) else (
        config.snn.time_steps,)
    if not times:
        raise ConfigError("snn.time_steps (T) must list at least one value")
    for t in times:
        _int_at_least("snn.time_steps (T)", t, 1)
    _int_at_least("snn.presim (rho)", config.snn.presim, 0)
    iterations = tuple(config.snn.iterations) if isinstance(config.snn.iterations, (tuple, list)) else (
        config.snn.iterations,)
    for k in iterations:
        _int_at_least("snn.iterations (k)", k, 1)
    _int_at_least("optim.epochs", config.optim.epochs, 1)
    _int_at_least("optim.batch_size", config.optim.batch_size, 1)
    _int_at_least("snn.eval_batch_size", config.snn.eval_batch_size, 1)
    _int_at_least("snn.micro_batch", config.snn.get("micro_batch", 0), 0)
    _int_at_least("log_every_steps", config.log_every_steps, 1)
    _int_at_least("checkpoint_every_steps", config.checkpoint_every_steps, 1)
    _int_at_least("keep_checkpoints", config.keep_checkpoints, 1)
    devices = jax.device_count()
    for name, batch in (("optim.batch_size", config.optim.batch_size),
                        ("snn.eval_batch_size", config.snn.eval_batch_size)):
        if batch % devices:
            raise ConfigError(f"{name}={batch} does not divide over the {devices} devices; "
                              f"use a multiple of {devices}")
    if not config.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {config.optim.lr}")
