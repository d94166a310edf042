"""The job: what ``python -m train.main`` does with a config and a workdir.

Modes (``config.mode``):
  * ``train_eval``: train (or resume) the QCFS ANN, then evaluate it;
  * ``eval``: evaluate the workdir's latest checkpoint (or ``init_from``);
  * ``analyze``: evaluate plus offset-spike, firing-rate and energy analysis.

The evaluators each mode runs are ``train.evaluation.evaluators.MODE_EVALUATORS``.
``main`` maps the pipeline's errors to one line on stderr and an exit status.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax

from train import architectures, checkpoints, training_loop
from train import workdir as workdirs
from train.data import batching
from train.data.sources import ImageFolderSource, Splits, broken_files, load_splits, random_subset
from train.errors import (
    CheckpointError,
    Interrupted,
    PipelineError,
    StorageError,
    print_causes,
)
from train.evaluation import analysis_report, evaluators, report, static_potentials
from train.metric_writer import MetricWriter
from train.preemption import StopSignals
from train.sharding import Shardings, make_mesh
from train.validate import validate_config, validate_data


def test_source(config, splits: Splits):
    """The test set, or a seeded random subset of ``snn.max_eval_examples``."""
    limit = config.snn.max_eval_examples
    if limit and limit < len(splits.test):
        return random_subset(splits.test, limit, config.seed)
    return splits.test


def image_shape(config, splits: Splits) -> tuple[int, ...]:
    """The shape ``[H, W, C]`` of a network input (a transformed test image)."""
    return batching.transforms(config)[1](splits.test[0])["image"].shape


def load_for_eval(config, workdir: str, model, splits: Splits, shardings: Shardings) -> dict:
    """Variables to evaluate: an imported PyTorch checkpoint, or the latest
    checkpoint in the workdir."""
    return _load_for_eval(config, workdir, model, splits, shardings)[0]


def _load_for_eval(config, workdir, model, splits, shardings) -> tuple[dict, int | None]:
    """``(variables, the workdir checkpoint's step or None for init_from)``."""
    if config.init_from:
        from cosjax.torch_interop import load_torch_checkpoint

        try:
            size = config.dataset.image_size if config.model.arch.startswith("vgg") else None
            variables = load_torch_checkpoint(config.init_from, config.model.arch, splits.num_classes,
                                              image_size=size)
        except (OSError, ValueError, ImportError) as error:
            raise CheckpointError(f"cannot import {config.init_from}: {error}") from error
        return jax.device_put(variables, shardings.replicated), None
    state = training_loop.create_state(model, config, image_shape(config, splits), 1, shardings.replicated)
    mngr = checkpoints.manager(workdir, config.keep_checkpoints, create=False)
    try:
        restored = checkpoints.restore(mngr, state, describe(config, splits))
    finally:
        mngr.close()
    if restored is None:
        raise CheckpointError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')} to evaluate; train first "
            f"(--config.mode=train_eval) or pass --config.init_from=model.pth")
    return {"params": restored[1].params, "batch_stats": restored[1].batch_stats}, restored[0]


def describe(config, splits: Splits) -> dict:
    return checkpoints.describe(config, splits.num_classes, len(splits.train))


def header(config) -> dict[str, Any]:
    """The fields that open results.json and analysis.json."""
    return {"dataset": config.dataset.name, "arch": config.model.arch, "levels": config.model.levels,
            "presim": config.snn.presim, "iterations": list(config.snn.iterations)}


def devices_line() -> str:
    """One line naming the backend, the device kind and count; on the CPU it
    says so and how to install jax for a GPU or TPU."""
    devices = jax.devices()
    what = f"{len(devices)} x {devices[0].device_kind}"
    if jax.default_backend() == "cpu":
        return (f"running on CPU ({what}; no GPU/TPU found): for an NVIDIA GPU "
                f"pip install -e '.[train,cuda12]' (or cuda13), for a TPU VM "
                f"pip install -e '.[train,tpu]'")
    return f"running on {jax.default_backend().upper()}: {what}"


def run(config, workdir: str, stop: StopSignals | None = None) -> dict | None:
    """Checks everything, then trains (mode train_eval), evaluates and writes
    the results files, holding the workdir's lock; returns the results.

    ``stop``: the installed signal handlers (``train.preemption``); training
    stops at a step boundary with a checkpoint when they see a signal.
    """
    start_time = time.time()
    validate_config(config)
    if jax.process_index() == 0:
        print(devices_line(), flush=True)
    workdir = workdirs.prepare(workdir)
    with workdirs.Lock(workdir, enabled=jax.process_index() == 0):
        splits = load_splits(config)
        validate_data(config, splits)
        if config.mode == "train_eval" and isinstance(splits.test, ImageFolderSource):
            # A broken test image must not wait for the end of training to show.
            splits.test.verify(config.dataset.skip_broken, config.data_threads)
        model = architectures.from_config(config, splits.num_classes)
        if static_potentials.enabled(config) and config.snn.static.potentials:
            static_potentials.load_given(config, model, image_shape(config, splits))  # a bad file: now
        shardings = make_mesh()
        with jax.default_matmul_precision(config.precision):
            variables, step = _variables(config, workdir, model, splits, shardings, stop)
            calib = (static_potentials.calibration_source(config, splits.train)
                     if static_potentials.enabled(config) else None)
            ctx = evaluators.EvalContext(config, model, test_source(config, splits), shardings,
                                         calib_source=calib, workdir=workdir, checkpoint_step=step)
            metrics = evaluators.evaluate_all(ctx, variables, evaluators.MODE_EVALUATORS[config.mode])
        if config.dataset.skip_broken:
            metrics["skipped_images"] = dict(sorted(broken_files(splits).items()))
        return _write(config, workdir, metrics, start_time)


def _variables(config, workdir, model, splits, shardings, stop) -> tuple[dict, int | None]:
    """``(variables, checkpoint step)`` to evaluate: trained (or resumed) in
    mode train_eval, else loaded (the step is None for ``init_from``)."""
    if config.mode != "train_eval":
        return _load_for_eval(config, workdir, model, splits, shardings)
    writer = MetricWriter(workdir)
    try:
        state = training_loop.fit(config, workdir, model, splits, shardings, writer,
                            image_shape(config, splits), describe(config, splits),
                            stop.requested if stop else (lambda: 0),
                            deferred=stop.deferred if stop else None)
    finally:
        writer.close()
    return ({"params": state.params, "batch_stats": state.batch_stats},
            int(jax.device_get(state.step)))


def _write(config, workdir: str, metrics: dict, start_time: float) -> dict:
    """Adds the run's description to the metrics and writes them (process 0);
    a failed write is one ``StorageError`` saying what is kept."""
    try:
        return _write_results(config, workdir, metrics, start_time)
    except OSError as error:
        steps = checkpoints.saved_steps(os.path.join(workdir, "checkpoints"))
        kept = f"the checkpoint of step {steps[-1]} is kept; " if steps else ""
        raise StorageError(f"cannot write the results in {workdir}: "
                           f"{error.strerror or error}; {kept}no results file is half-written "
                           f"(each is replaced whole or not at all); make room and rerun the "
                           f"same command to write them") from error


def _write_results(config, workdir: str, metrics: dict, start_time: float) -> dict:
    results = {**header(config), "time_steps": sorted(config.snn.time_steps), **metrics,
               "wall_time_s": time.time() - start_time}
    if config.mode == "analyze":
        if jax.process_index() == 0:
            analysis_report.write_outputs(results, workdir)
        return results
    results.update(num_devices=jax.device_count(), num_processes=jax.process_count())
    results["latency"] = report.latency_table(results)
    if jax.process_index() == 0:
        report.write_results(results, workdir)
        print(report.markdown_table(results), flush=True)
    return results


def main(config, workdir: str, verbose: bool = False) -> int:
    """Runs the job; returns the exit status: 0; 2 after one line ``error: ...``
    on stderr for a mistake the user can fix (``verbose``: then its traceback
    and causes); 143 / 130 after one line ``interrupted: ...`` for SIGTERM /
    SIGINT."""
    try:
        with StopSignals() as stop:
            run(config, workdir, stop)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        if verbose:
            print_causes(error)
        return 2
    except Interrupted as stopped:
        print(f"interrupted: {stopped}", file=sys.stderr, flush=True)
        return stopped.exit_status
    return 0
