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

# The fields that change the training trajectory. dataset.root is left out
# (data may move), and so is everything that only changes evaluation.
RECIPE_FIELDS = ("seed", "dataset.name", "dataset.train_split", "dataset.image_size",
                 "dataset.augment", "dataset.autoaugment", "dataset.cutout", "dataset.mean",
                 "dataset.std", "dataset.skip_broken", "model.arch", "model.levels", "optim.epochs",
                 "optim.batch_size", "optim.lr", "optim.momentum", "optim.weight_decay")


def recipe(config, num_train: int) -> dict:
    """The training recipe: ``RECIPE_FIELDS`` and the training set size, as
    JSON values."""
    values = {}
    for field in RECIPE_FIELDS:
        node = config
        for part in field.split("."):
            node = node.get(part, False) if part == "skip_broken" else node[part]
        values[field] = node
    if config.dataset.get("device_augment", False):   # absent when False: older checkpoints match
        values["dataset.device_augment"] = True
    values["train_examples"] = num_train
    return json.loads(json.dumps(values))


def describe(config, num_classes: int, num_train: int) -> dict:
    """What a checkpoint is saved with and must match: ``model`` (checked
    whenever it is restored) and ``recipe`` (checked when training resumes)."""
    return {"model": {"arch": config.model.arch, "num_classes": num_classes,
                      "levels": config.model.levels},
            "recipe": recipe(config, num_train)}


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
        raise CheckpointError(f"cannot use {directory}: {error.strerror or error}") from None


def save(mngr: ocp.CheckpointManager, step: int, state: Any, description: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            model=ocp.args.JsonSave(description["model"]),
                                            recipe=ocp.args.JsonSave(description["recipe"])))
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
        raise _corrupted(where, error) from None
    model = description["model"]
    mismatched = {k: (saved["model"].get(k), v) for k, v in model.items() if saved["model"].get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in mismatched.items())
        raise CheckpointError(f"checkpoint {where} holds another model ({details})")
    if "recipe" in items:
        old, new = saved["recipe"], description["recipe"]
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
        raise _corrupted(where, error) from None
    return step, restored["state"]
