"""Static calibration in the pipeline (``config.snn.static``): the calibration
set, the calibration itself and the saved potentials.

The calibration set is a seeded random subset (``config.seed``) of
``snn.static.calib_size`` *training* images, preprocessed by the evaluation
transform (no augmentation), so the test set is never seen. The potentials
(``cosjax.static_calibration``, docs/static_calibration.md) are written to
``WORKDIR/static_potentials.npz`` (atomically, by process 0) and evaluated as
the method ``static``: plain conversion with these initial potentials and no
pre-simulation, so its accuracy at T costs T steps.

Where the potentials come from (:func:`potentials`, one line on stdout says
which and why): ``snn.static.potentials`` (a file, not calibrated);
else ``WORKDIR/static_potentials.npz`` when its recorded settings
(:data:`MATCHED`) equal this run's and it fits the model; else a fresh
calibration, which replaces that file.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cosjax import static_calibration
from train.data import batching
from train.data.sources import random_subset
from train.errors import ConfigError, DataError

KEY = "static"
FILENAME = "static_potentials.npz"
LABEL = "static v0 ({estimator}, per {granularity}, W={window})"
MATCHED = ("estimator", "granularity", "window", "calib_size", "seed", "clip_range", "iterations",
           "precision", "dataset", "init_from", "checkpoint_step")
"""The recorded settings a saved file must share with the run to be reused:
the calibration's, and which network it was calibrated for (the workdir
checkpoint's step, or the imported ``init_from`` file)."""
RECORDED = ("window", "calib_images", "estimator", "granularity", "clip_range", "calib_seconds",
            "seed", "calib_size", "iterations", "precision", "dataset", "init_from",
            "checkpoint_step")
"""The fields of a file's info copied into ``settings["static"]``."""


@dataclasses.dataclass(frozen=True)
class Calibrated:
    """The result of :func:`calibrate`: ``potentials`` ``{layer: v0}`` of the
    configured granularity, ``per_neuron`` ``{layer: v0 [...neuron shape]}``
    and ``settings`` (the fields recorded in results.json)."""

    potentials: dict[str, np.ndarray]
    per_neuron: dict[str, np.ndarray]
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        if all(k in self.settings for k in ("estimator", "granularity", "window")):
            return LABEL.format(**self.settings)
        return f"static v0 (from {os.path.basename(self.settings['potentials_file'])})"


def enabled(config) -> bool:
    return bool(config.snn.static.enabled)


def calibration_source(config, train: Sequence[dict]) -> Sequence[dict]:
    """``snn.static.calib_size`` training examples, drawn with ``config.seed``."""
    size = config.snn.static.calib_size
    return train if size == len(train) else random_subset(train, size, config.seed)


def calibration_images(config, source: Sequence[dict]) -> np.ndarray:
    """The examples through the evaluation transform: float32 ``[N, H, W, C]``.
    With ``dataset.skip_broken`` an example that fails to decode is left out."""
    _, eval_example = batching.transforms(config)
    skip = config.dataset.skip_broken
    images = []
    for index in range(len(source)):
        try:
            images.append(np.asarray(eval_example(source[index])["image"], np.float32))
        except DataError:
            if not skip:
                raise
    if not images:
        raise DataError("no calibration image could be read (snn.static)")
    return np.stack(images)


def wanted(config, checkpoint_step: int | None) -> dict[str, Any]:
    """This run's values of :data:`MATCHED`."""
    static = config.snn.static
    clip = tuple(static.clip_range) or None
    return {"estimator": static.estimator, "granularity": static.granularity,
            "window": static.window, "calib_size": static.calib_size, "seed": config.seed,
            "clip_range": [float(v) for v in clip] if clip and static.estimator == "mean_cos"
            else None,
            "iterations": 1, "precision": config.precision, "dataset": config.dataset.name,
            "init_from": config.init_from, "checkpoint_step": checkpoint_step}


def image_shape(config, source: Sequence[dict]) -> tuple[int, ...]:
    """One network input's shape ``[H, W, C]``: the first example of
    ``source`` that decodes, through the evaluation transform."""
    _, eval_example = batching.transforms(config)
    for index in range(len(source)):
        try:
            return tuple(np.shape(eval_example(source[index])["image"]))
        except DataError:
            if not config.dataset.skip_broken:
                raise
    raise DataError("no image could be read to shape the static potentials")


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(f"static potentials: {line}", flush=True)


def _fitted(potentials: dict[str, np.ndarray], shapes: dict) -> dict[str, np.ndarray]:
    """Per-neuron potentials; ValueError unless they name exactly the
    spiking layers, each with a float potential of a shape that fits (any
    granularity)."""
    unknown = [name for name in potentials if name not in shapes]
    missing = [name for name in shapes if name not in potentials]
    if unknown or missing:
        parts = ([f"unknown layer(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"no potential for layer(s) {', '.join(missing)}"] if missing else [])
        raise ValueError("; ".join(parts) + f" (the model's spiking layers: {', '.join(shapes)})")
    ints = [name for name, v0 in potentials.items() if not np.issubdtype(v0.dtype, np.floating)]
    if ints:
        raise ValueError(f"the potential of layer(s) {', '.join(ints)} is not floating point")
    return static_calibration.expand_potentials(potentials, shapes)


def _shapes(model, shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The model's neuron shapes for inputs ``shape`` (from abstract variables)."""
    images = jax.ShapeDtypeStruct((1,) + tuple(shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    return static_calibration.neuron_shapes(model, variables, shape)


def _settings(info: dict[str, Any], how: str, path: str | None) -> dict[str, Any]:
    """``settings["static"]``: presim 0, the :data:`RECORDED` fields of a
    file's info, how the potentials were obtained (``calibrated``,
    ``reused`` or ``loaded``) and the file."""
    settings = {"presim": 0, "iterations": 1, **{k: info[k] for k in RECORDED if k in info},
                "potentials": how}
    if path is not None:
        settings["potentials_file"] = path
    return settings


def load_given(config, model, shape: Sequence[int]) -> Calibrated:
    """``snn.static.potentials``: a saved file evaluated as it is. A file that
    cannot be read or does not fit the model (inputs ``shape``) raises
    ``ConfigError`` (``train/job.py`` calls this before any training)."""
    path = config.snn.static.potentials
    try:
        potentials, info = static_calibration.load_potentials(path)
    except ValueError as error:
        raise ConfigError(f"snn.static.potentials: {error}") from error
    try:
        per_neuron = _fitted(potentials, _shapes(model, shape))
    except ValueError as error:
        raise ConfigError(f"snn.static.potentials {path!r} does not fit the model: "
                          f"{error}") from error
    return Calibrated(potentials, per_neuron, _settings(info, "loaded", path))


def reuse_saved(model, shape: Sequence[int], workdir: str,
                want: dict[str, Any]) -> tuple[Calibrated | None, str]:
    """``(potentials of WORKDIR/static_potentials.npz, "")`` when the file
    matches ``want`` and fits the model, else ``(None, why not)``."""
    path = os.path.join(workdir, FILENAME)
    if not os.path.exists(path):
        return None, f"no saved {FILENAME}"
    try:
        potentials, info = static_calibration.load_potentials(path)
    except ValueError as error:
        return None, f"the saved file is unreadable: {error}"
    differing = [f"{k} {info.get(k)!r} -> {want[k]!r}" for k in MATCHED if info.get(k) != want[k]]
    if differing:
        return None, "the saved file was calibrated with " + ", ".join(differing)
    try:
        per_neuron = _fitted(potentials, _shapes(model, shape))
    except ValueError as error:
        return None, f"the saved file does not fit the model: {error}"
    return Calibrated(potentials, per_neuron, _settings(info, "reused", path)), ""


def potentials(config, model, variables, source: Sequence[dict], workdir: str | None,
               checkpoint_step: int | None, examples: Sequence[dict]) -> Calibrated:
    """The static potentials to evaluate (see the module docstring).

    Args:
      source: the calibration examples (training images).
      workdir: where the potentials are saved and reused from (None: neither).
      checkpoint_step: the step of the evaluated workdir checkpoint (None for
        an imported ``init_from``), recorded and matched.
      examples: examples whose shape the network input has (the test set).
    """
    if config.snn.static.potentials:
        given = load_given(config, model, image_shape(config, examples))
        _say(f"loaded {given.settings['potentials_file']} (snn.static.potentials; "
             f"not calibrated)")
        return given
    want = wanted(config, checkpoint_step)
    why = "no workdir"
    if workdir is not None:
        saved, why = reuse_saved(model, image_shape(config, examples), workdir, want)
        if saved is not None:
            _say(f"reusing {saved.settings['potentials_file']} (calibrated for the same "
                 f"settings and checkpoint)")
            return saved
    _say(f"calibrating ({why})")
    return calibrate(config, model, variables, source, workdir, want)


def calibrate(config, model, variables, source: Sequence[dict], workdir: str | None,
              want: dict[str, Any] | None = None) -> Calibrated:
    """Calibrates the static potentials on ``source`` (see the module
    docstring), times it and saves them, with ``want`` (:func:`wanted`) and
    the measured fields as their info, to ``workdir`` (when given)."""
    static = config.snn.static
    want = wanted(config, None) if want is None else want
    images = calibration_images(config, source)
    clip = want["clip_range"]
    start = time.perf_counter()
    potentials = static_calibration.calibrate_static(
        model, variables, images, window=static.window, estimator=static.estimator,
        granularity=static.granularity, clip_range=tuple(clip) if clip else None)
    seconds = time.perf_counter() - start
    info = {**want, "calib_images": int(images.shape[0]), "calib_seconds": seconds}
    path = None
    if workdir is not None:
        path = os.path.join(workdir, FILENAME)
        if jax.process_index() == 0:
            static_calibration.save_potentials(path, potentials, info=info)
    shapes = static_calibration.neuron_shapes(model, variables, images.shape[1:])
    per_neuron = static_calibration.expand_potentials(potentials, shapes)
    return Calibrated(potentials, per_neuron, _settings(info, "calibrated", path))
