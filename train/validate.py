"""Checks of a run before any long work starts: every config field (type,
range, length), the fields against each other and against the devices
(``validate_config``), and the config against the data (``validate_data``:
batch sizes against split sizes, image size against the augmentation, the
first and last example of each split decode). Each failure is a
``ConfigError`` or ``DataError`` naming the setting or file."""

from __future__ import annotations

import difflib
import functools
import math
import numbers
import os

import jax

from cosjax import static_calibration
from cosjax.checks import check_int
from train import architectures
from train.checkpoints import flat_config
from train.data.decoding import check_decodes
from train.data.sources import KNOWN_DATASETS, Splits
from train.errors import ConfigError, DataError
from train.evaluation import eval_steps

MODES = ("train_eval", "eval", "analyze")
PRECISIONS = ("highest", "high", "default", "float32", "bfloat16", "tensorfloat32")
AUGMENTATIONS = ("cifar", "imagenet", "flip_translate", "none")
STATIC_ESTIMATORS = static_calibration.ESTIMATORS
STATIC_GRANULARITIES = static_calibration.GRANULARITIES

_int = functools.partial(check_int, error=ConfigError)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


def _str(name: str, value, nonempty: bool = False) -> None:
    if not isinstance(value, str) or (nonempty and not value):
        raise ConfigError(f"{name} must be a{' non-empty' if nonempty else ''} string, got {value!r}")


def _real(name: str, value, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
        hi = "" if high is None else f"{high}{')' if high_open else ']'}"
        want = (f" in {lo}{hi}" if low is not None and high is not None else
                f" {'>' if low_open else '>='} {low}" if low is not None else
                f" <= {high}" if high is not None else "")
        raise ConfigError(f"{name} must be a finite number{want}, got {value!r}")


def _ints(name: str, value, low: int) -> tuple[int, ...]:
    """A non-empty tuple/list of ints >= low (a single int is accepted)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not values:
        raise ConfigError(f"{name} must list at least one value")
    for v in values:
        _int(name, v, low)
    return values


def _triple(name: str, value, positive: bool) -> None:
    """Per-channel mean/std: 3 finite numbers (std > 0)."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ConfigError(f"{name} must hold 3 values (R, G, B), got {value!r}")
    for v in value:
        _real(name, v, 0.0 if positive else None, low_open=positive)


def _static(static) -> None:
    """``snn.static``: static calibration settings."""
    _bool("snn.static.enabled", static.enabled)
    _int("snn.static.window (W)", static.window, 1)
    _choice("snn.static.estimator", static.estimator, STATIC_ESTIMATORS)
    _choice("snn.static.granularity", static.granularity, STATIC_GRANULARITIES)
    _int("snn.static.calib_size", static.calib_size, 1)
    clip = static.clip_range
    if not isinstance(clip, (tuple, list)) or len(clip) not in (0, 2):
        raise ConfigError(f"snn.static.clip_range must be () or (lo, hi), got {clip!r}")
    for v in clip:
        _real("snn.static.clip_range", v)
    if clip and clip[0] > clip[1]:
        raise ConfigError(f"snn.static.clip_range must have lo <= hi, got {tuple(clip)}")
    path = static.potentials
    _str("snn.static.potentials", path)
    if path and not static.enabled:
        raise ConfigError("snn.static.potentials is set but snn.static.enabled is False; "
                          "add --config.snn.static.enabled=True")
    if path and not os.path.isfile(path):
        raise ConfigError(f"snn.static.potentials {path!r} is not a file" if os.path.exists(path)
                          else f"snn.static.potentials file {path!r} does not exist")


def _complete(config) -> None:
    """Every field of ``configs/default.py`` is present (the pipeline reads
    fields directly, trusting ml_collections for their types) and no other:
    a field a config file adds is a misspelt one, refused as on the command
    line (``unknown config field ...; did you mean ...?``)."""
    from configs import default

    known, given = set(flat_config(default.get_config())), set(flat_config(config))
    missing = sorted(known - given)
    if missing:
        raise ConfigError(f"the config lacks {', '.join(missing)}: build config files on "
                          f"configs.default.get_config() (or a config built on it)")
    unknown = sorted(given - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config field {unknown[0]!r}{hint}")


def validate_config(config) -> None:
    """Raises ``ConfigError`` naming the first invalid setting."""
    _complete(config)
    _choice("mode", config.mode, MODES)
    _int("seed", config.seed, 0)
    _str("init_from", config.init_from)
    _choice("precision", config.precision, PRECISIONS)
    _int("data_threads", config.data_threads, 1, 256)

    _dataset(config)


    architectures.factory(config.model.arch)
    _int("model.levels (L)", config.model.levels, 1)
    _fastnet(config.model.fastnet)
    _optim(config.optim)

    _snn(config)
    snn = config.snn
    _int("analysis.window", config.analysis.window, 0)

    _int("log_every_steps", config.log_every_steps, 1)
    _int("checkpoint_every_steps", config.checkpoint_every_steps, 1)
    _int("keep_checkpoints", config.keep_checkpoints, 1)

    if config.init_from:
        if config.mode == "train_eval":
            raise ConfigError("init_from evaluates an imported checkpoint: use --config.mode=eval")
        if not os.path.isfile(config.init_from):
            raise ConfigError(f"init_from {config.init_from!r} is not a file" if os.path.exists(
                config.init_from) else f"init_from file {config.init_from!r} does not exist")
    devices, processes = jax.device_count(), jax.process_count()
    for name, batch in (("optim.batch_size", config.optim.batch_size),
                        ("snn.eval_batch_size", snn.eval_batch_size)):
        if batch % devices:
            raise ConfigError(f"{name}={batch} does not divide over the {devices} devices; "
                              f"use a multiple of {devices}")
        if batch % processes:
            raise ConfigError(f"{name}={batch} does not divide over the {processes} processes")


def _fastnet(fast) -> None:
    """``model.fastnet``: the fast network's settings (used with arch=fastnet)."""
    _ints("model.fastnet.widths", fast.widths, 1)
    _int("model.fastnet.convs_per_group", fast.convs_per_group, 1)
    _choice("model.fastnet.activation", fast.activation, ("qcfs", "gelu"))
    _choice("model.fastnet.pool", fast.pool, ("avg", "max"))
    _bool("model.fastnet.dirac_init", fast.dirac_init)
    _bool("model.fastnet.pool_after_activation", fast.pool_after_activation)
    _real("model.fastnet.lam_init", fast.lam_init, 0.0, low_open=True)
    _real("model.fastnet.head_scale", fast.head_scale, 0.0, low_open=True)
    _real("model.fastnet.bn_epsilon", fast.bn_epsilon, 0.0, low_open=True)
    _int("model.fastnet.whiten_examples", fast.whiten_examples, 0)
    _real("model.fastnet.whiten_eps", fast.whiten_eps, 0.0)


def _optim(opt) -> None:
    """``optim``: the optimiser's settings (``train/optimizer.py``)."""
    from train import optimizer, weight_average

    _int("optim.epochs", opt.epochs, 1)
    _int("optim.batch_size", opt.batch_size, 1)
    _real("optim.lr", opt.lr, 0.0, low_open=True)
    _real("optim.momentum", opt.momentum, 0.0, 1.0, high_open=True)
    _real("optim.weight_decay", opt.weight_decay, 0.0)
    _bool("optim.nesterov", opt.nesterov)
    _choice("optim.weight_decay_mode", opt.weight_decay_mode, optimizer.WEIGHT_DECAY_MODES)
    _choice("optim.schedule", opt.schedule, optimizer.SCHEDULES)
    _real("optim.warmup_fraction", opt.warmup_fraction, 0.0, 1.0)
    _real("optim.initial_lr_fraction", opt.initial_lr_fraction, 0.0, 1.0)
    _str("optim.lr_multipliers", opt.lr_multipliers)
    optimizer.parse_multipliers(opt.lr_multipliers)
    if not isinstance(opt.frozen, (tuple, list)) or not all(isinstance(f, str) for f in opt.frozen):
        raise ConfigError(f"optim.frozen must be a tuple of group names or path patterns, "
                          f"got {opt.frozen!r}")
    _real("optim.label_smoothing", opt.label_smoothing, 0.0, 1.0, high_open=True)
    _choice("optim.average", opt.average, weight_average.MODES)
    _int("optim.average_every", opt.average_every, 1)
    _real("optim.average_decay", opt.average_decay, 0.0, 1.0)


def _dataset(config) -> None:
    """``dataset`` and the input-pipeline settings."""
    ds = config.dataset
    _choice("data set", ds.name, KNOWN_DATASETS)
    _str("dataset.root", ds.root)
    _str("dataset.train_split", ds.train_split, nonempty=True)
    _str("dataset.test_split", ds.test_split, nonempty=True)
    _int("dataset.image_size", ds.image_size, 1)
    _int("dataset.eval_resize", ds.eval_resize, 1)
    _choice("dataset.augment", ds.augment, AUGMENTATIONS)
    _bool("dataset.autoaugment", ds.autoaugment)
    _int("dataset.cutout", ds.cutout, 0, ds.image_size if ds.augment == "cifar" else None)
    _triple("dataset.mean", ds.mean, positive=False)
    _triple("dataset.std", ds.std, positive=True)
    _bool("dataset.skip_broken", ds.skip_broken)
    # Input pipeline (issue 13).
    _int("data_prefetch_batches", config.data_prefetch_batches, 1, 64)
    _int("data_workers", config.data_workers, 0, 256)
    _bool("dataset.device_augment", ds.device_augment)
    if config.data_workers and ds.skip_broken:
        raise ConfigError("dataset.skip_broken=True lists the skipped files of the training "
                          "process only: use it with data_workers=0")
    _bool("dataset.jpeg_draft", ds.jpeg_draft)
    _int("dataset.translate", ds.translate, 0, ds.image_size - 1)
    _bool("dataset.alternating_flip", ds.alternating_flip)
    if ds.augment == "flip_translate" and not ds.device_augment:
        raise ConfigError("dataset.augment='flip_translate' runs in the training step: add "
                          "--config.dataset.device_augment=True")
    if ds.device_augment and ds.augment not in ("cifar", "imagenet", "flip_translate"):
        raise ConfigError(f"dataset.device_augment=True needs dataset.augment='cifar', "
                          f"'imagenet' or 'flip_translate', got {ds.augment!r}")
    _bool("dataset.on_device", ds.on_device)
    if ds.on_device:
        if ds.augment not in ("cifar", "flip_translate"):
            raise ConfigError(f"dataset.on_device=True needs dataset.augment='cifar' or "
                              f"'flip_translate' (the held "
                              f"images are the stored ones, augmented in the step), got {ds.augment!r}")
        if not ds.device_augment:
            raise ConfigError("dataset.on_device=True needs dataset.device_augment=True (crop, "
                              "flip and Cutout of the held training set run in the training step)")
        if ds.autoaugment:
            raise ConfigError("dataset.on_device=True needs dataset.autoaugment=False: AutoAugment "
                              "runs on the host per image (PIL), so the images cannot stay on the "
                              "device")
        if config.data_workers:
            raise ConfigError("dataset.on_device=True leaves no per-example work to the host: set "
                              "data_workers=0")
    if ds.augment == "imagenet" and ds.eval_resize < ds.image_size:
        raise ConfigError(f"dataset.eval_resize={ds.eval_resize} is smaller than the centre crop "
                          f"dataset.image_size={ds.image_size}")


def _snn(config) -> None:
    """``snn``: the evaluation settings."""
    snn = config.snn
    _ints("snn.time_steps (T)", snn.time_steps, 1)
    _int("snn.presim (rho)", snn.presim, 0)
    _ints("snn.iterations (k)", snn.iterations, 1)
    _int("snn.eval_batch_size", snn.eval_batch_size, 1)
    _int("snn.micro_batch", snn.micro_batch, 0)
    _int("snn.max_eval_examples", snn.max_eval_examples, 0)
    _int("snn.tta", snn.tta, 0, 2)
    _methods(config)
    _static(snn.static)


def _methods(config) -> None:
    """``snn.methods``: each entry parses."""
    methods = eval_steps.method_specs(config)
    for spec in methods:
        try:
            eval_steps.method_setting(spec, config.snn.presim)
        except ValueError as err:
            raise ConfigError(str(err)) from err


def validate_data(config, splits: Splits) -> None:
    """Checks the config against the data set; decodes the first and last
    example of each split (a broken one is named, unless skipped)."""
    if config.mode == "train_eval" and config.optim.batch_size > len(splits.train):
        raise ConfigError(f"optim.batch_size={config.optim.batch_size} is larger than the training "
                          f"set ({len(splits.train)} examples)")
    static = config.snn.static
    if static.enabled and static.calib_size > len(splits.train):
        raise ConfigError(f"snn.static.calib_size={static.calib_size} is larger than the training "
                          f"set ({len(splits.train)} examples)")
    size = config.dataset.image_size
    for split, source in (("train", splits.train), ("test", splits.test)):
        for index in sorted({0, len(source) - 1}):
            try:
                image = source[index]["image"]
                check_decodes(image)
            except DataError:
                if config.dataset.skip_broken:
                    continue
                raise
            if config.dataset.augment in ("cifar", "none") and tuple(image.shape[:2]) != (size, size):
                raise ConfigError(
                    f"dataset.image_size={size} but the {split} images are "
                    f"{image.shape[0]}x{image.shape[1]}; augment={config.dataset.augment!r} does not "
                    f"resize: set --config.dataset.image_size={image.shape[0]}"
                    if image.shape[0] == image.shape[1] else
                    f"the {split} images are {image.shape[0]}x{image.shape[1]}, not square; "
                    f"augment={config.dataset.augment!r} needs square images of dataset.image_size")
