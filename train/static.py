"""Static calibration in the pipeline (``config.snn.static``): the calibration
set, the calibration itself and the saved potentials.

The calibration set is a seeded random subset (``config.seed``) of
``snn.static.calib_size`` *training* images, preprocessed by the evaluation
transform (no augmentation), so the test set is never seen. The potentials
(``cosjax.static_calibration``, docs/static_calibration.md) are written to
``WORKDIR/static_potentials.npz`` (atomically, by process 0) and evaluated as
the method ``static``: plain conversion with these initial potentials and no
pre-simulation, so its accuracy at T costs T steps.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from cosjax import static_calibration
from train import input_pipeline
from train.data import random_subset
from train.errors import DataError

KEY = "static"
FILENAME = "static_potentials.npz"
LABEL = "static v0 ({estimator}, per {granularity}, W={window})"


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
        return LABEL.format(**self.settings)


def enabled(config) -> bool:
    static = config.snn.get("static")
    return bool(static is not None and static.enabled)


def calibration_source(config, train: Sequence[dict]) -> Sequence[dict]:
    """``snn.static.calib_size`` training examples, drawn with ``config.seed``."""
    size = config.snn.static.calib_size
    return train if size == len(train) else random_subset(train, size, config.seed)


def calibration_images(config, source: Sequence[dict]) -> np.ndarray:
    """The examples through the evaluation transform: float32 ``[N, H, W, C]``.
    With ``dataset.skip_broken`` an example that fails to decode is left out."""
    _, eval_example = input_pipeline.transforms(config)
    skip = config.dataset.get("skip_broken", False)
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


def calibrate(config, model, variables, source: Sequence[dict], workdir: str | None) -> Calibrated:
    """Calibrates the static potentials on ``source`` (see the module
    docstring), times it and saves them to ``workdir`` (when given)."""
    static = config.snn.static
    images = calibration_images(config, source)
    clip = tuple(static.get("clip_range", ())) or None
    start = time.perf_counter()
    potentials = static_calibration.calibrate_static(
        model, variables, images, window=static.window, estimator=static.estimator,
        granularity=static.granularity, clip_range=clip if static.estimator == "mean_cos" else None)
    seconds = time.perf_counter() - start
    settings = {"presim": 0, "iterations": 1, "window": static.window,
                "calib_images": int(images.shape[0]), "estimator": static.estimator,
                "granularity": static.granularity, "calib_seconds": seconds}
    if static.estimator == "mean_cos":
        settings["clip_range"] = list(clip) if clip else None
    if workdir is not None and jax.process_index() == 0:
        info = {k: v for k, v in settings.items() if k not in ("presim", "iterations")}
        static_calibration.save_potentials(os.path.join(workdir, FILENAME), potentials,
                                           info={**info, "seed": config.seed})
    shapes = static_calibration.neuron_shapes(model, variables, images.shape[1:])
    per_neuron = static_calibration.expand_potentials(potentials, shapes)
    return Calibrated(potentials, per_neuron, settings)
