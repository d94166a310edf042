"""Orbax checkpoints of the training state, with a description of the model
they hold so that a checkpoint of another architecture or class count is
refused with a clear message.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.errors import CheckpointError, ConfigError

# The fields a resume may change: they do not change the training
# trajectory (evaluation, logging, checkpoint cadence, where the data lives,
# how the host feeds the device, matmul precision). A name covers its
# sub-fields ("snn" is every snn.* field). Every other field of the config is
# part of the training recipe and must match to resume.
EVAL_ONLY_FIELDS = (
    "mode", "init_from", "precision", "data_threads", "data_prefetch_batches", "data_workers",
    "dataset.root", "dataset.test_split", "dataset.eval_resize", "dataset.jpeg_draft",
    "dataset.on_device", "snn", "analysis", "log_every_steps", "checkpoint_every_steps",
    "keep_checkpoints")


def flat_config(config) -> dict[str, Any]:
    """Every field of a config as ``{dotted name: JSON value}``."""
    flat: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    walk(config, "")
    return json.loads(json.dumps(flat))


def eval_only(field: str) -> bool:
    """Whether a dotted field is one of ``EVAL_ONLY_FIELDS`` (or under one)."""
    return any(field == name or field.startswith(name + ".") for name in EVAL_ONLY_FIELDS)


def recipe_fields_of(flat: dict[str, Any]) -> dict[str, Any]:
    """The recipe part of a flat config (:func:`flat_config`)."""
    return {k: v for k, v in flat.items() if not eval_only(k)}


def recipe(config, num_train: int) -> dict:
    """The training recipe: every config field outside ``EVAL_ONLY_FIELDS``,
    and the training set size, as JSON values."""
    return {**recipe_fields_of(flat_config(config)), "train_examples": num_train}


def _default_recipe() -> dict:
    """The recipe fields of ``configs/default.py``: what a checkpoint written
    before a field was recorded was trained with for that field."""
    from configs import default

    return recipe(default.get_config(), 0)


def describe(config, num_classes: int, num_train: int) -> dict:
    """What a checkpoint is saved with: ``model`` (checked whenever it is
    restored), ``recipe`` (checked when training resumes) and the whole
    ``config`` (for the record)."""
    return {"model": {"arch": config.model.arch, "num_classes": num_classes,
                      "levels": config.model.levels},
            "recipe": recipe(config, num_train), "config": flat_config(config)}


@contextlib.contextmanager
def quiet():
    """Silences orbax while it restores: its absl log lines (e.g. "Failed to
    json parse Metadata file" when it recovers on its own) and, when a restore
    fails, the tracebacks that its abandoned reads print from background
    threads ("Event loop is closed"). Failures still raise."""
    from absl import logging

    level, stderr = logging.get_verbosity(), sys.stderr
    logging.set_verbosity(logging.FATAL)
    sys.stderr = io.StringIO()
    try:
        yield
    except BaseException:
        time.sleep(0.5)    # let the abandoned reads finish (and print into the buffer)
        raise
    finally:
        sys.stderr = stderr
        logging.set_verbosity(level)


def manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    """The orbax manager of ``workdir/checkpoints`` keeping the ``keep`` latest."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is not a directory; move it away to train or "
                              f"evaluate in this workdir")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    try:
        with quiet():
            return ocp.CheckpointManager(directory, options=options)
    except OSError as error:
        raise CheckpointError(f"cannot use {directory}: {error.strerror or error}") from error


def save(mngr: ocp.CheckpointManager, step: int, state: Any, description: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            model=ocp.args.JsonSave(description["model"]),
                                            recipe=ocp.args.JsonSave(description["recipe"]),
                                            config=ocp.args.JsonSave(description["config"])))
    mngr.wait_until_finished()


def _corrupted(where: str, error: Exception) -> CheckpointError:
    return CheckpointError(f"checkpoint {where} is corrupted or truncated ({type(error).__name__}); "
                           f"delete that directory to resume from an earlier checkpoint, or use a "
                           f"new --workdir")


def restore(mngr: ocp.CheckpointManager, target: Any, description: dict,
            check_recipe: bool = False) -> tuple[int, Any] | None:
    """Restores the latest checkpoint into the structure, shapes and shardings
    of ``target``; None when there is none. Refuses a checkpoint of another
    model and, with ``check_recipe``, one trained with another recipe
    (checkpoints written before recipes were saved are not checked)."""
    with quiet():
        return _restore(mngr, target, description, check_recipe)


def _restore(mngr, target, description, check_recipe):
    step = mngr.latest_step()
    if step is None:
        return None
    where = os.path.join(str(mngr.directory), str(step))
    items = {"model": ocp.args.JsonRestore()}
    if check_recipe and os.path.isdir(os.path.join(where, "recipe")):
        items["recipe"] = ocp.args.JsonRestore()
    try:
        saved = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:
        raise _corrupted(where, error) from error
    model = description["model"]
    mismatched = {k: (saved["model"].get(k), v) for k, v in model.items() if saved["model"].get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in mismatched.items())
        raise CheckpointError(f"checkpoint {where} holds another model ({details})")
    if "recipe" in items:
        new = description["recipe"]
        defaults = _default_recipe()   # fields an older checkpoint did not record
        old = {**{k: defaults[k] for k in new if k in defaults}, **saved["recipe"]}
        differing = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if differing:
            details = "; ".join(f"{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}"
                                for k in differing)
            raise ConfigError(f"the workdir's training run (checkpoint {where}) used another recipe "
                              f"({details}); restore those settings or use a new --workdir "
                              f"(settings that only change evaluation may differ)")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as error:
        raise _corrupted(where, error) from error
    return step, restored["state"]
