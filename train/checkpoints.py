"""Orbax checkpoints of the training state, with a description of the model
they hold so that a checkpoint of another architecture or class count is
refused with a clear message, and a digest of the state so that bytes
damaged after the save are refused on restore instead of trained on.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
A save that fails (a full disk, a read-only directory) is one
``StorageError`` saying which checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from train.errors import CheckpointError, ConfigError, Interrupted, StorageError

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


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, closed quietly after a save that failed or was
    interrupted (closing waits for the abandoned save, which orbax would
    report again, with tracebacks, below the one-line message)."""

    abandoned = False

    def close(self) -> None:
        if not self.abandoned:
            return super().close()
        try:
            with quiet():
                super().close()
        except Exception:   # the failure is reported already
            pass


def manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    """The orbax manager of ``workdir/checkpoints`` keeping the ``keep`` latest."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CheckpointError(f"{directory} is not a directory; move it away to train or "
                              f"evaluate in this workdir")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    try:
        with quiet():
            return _Manager(directory, options=options)
    except OSError as error:
        raise CheckpointError(f"cannot use {directory}: {error.strerror or error}") from error


DIGEST_CHUNK_BYTES = 64 << 20
"""The state is hashed in pieces of at most this many bytes, in parallel."""


def _host_array(leaf) -> np.ndarray:
    """A state leaf on the host. The state is replicated: on several hosts,
    each process holds the whole array on its own devices."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.ascontiguousarray(jax.device_get(leaf))


def digest(state: Any) -> str:
    """SHA-256 (hex) of a state: each leaf's dtype, shape and bytes, in tree
    order. Leaves are cut into pieces of ``DIGEST_CHUNK_BYTES``, each hashed
    on a thread of its own, and the digest is the hash of their hashes, so it
    does not depend on the number of threads."""
    arrays = [_host_array(leaf) for leaf in jax.tree_util.tree_leaves(state)]
    pieces, header = [], hashlib.sha256()
    for array in arrays:
        header.update(f"{array.dtype.str}{array.shape};".encode())
        data = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
        pieces += [data[i:i + DIGEST_CHUNK_BYTES]
                   for i in range(0, max(len(data), 1), DIGEST_CHUNK_BYTES)]
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        hashes = list(pool.map(lambda piece: hashlib.sha256(piece).digest(), pieces))
    return hashlib.sha256(header.digest() + b"".join(hashes)).hexdigest()


def _names(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def saved_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints in ``directory`` (orbax's
    temporary directories of unfinished saves are left out)."""
    return sorted(int(n) for n in _names(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def kept(directory: str) -> str:
    """What a failed run leaves to resume from, as words for its message."""
    steps = saved_steps(directory)
    if not steps:
        return "no checkpoint had been saved yet"
    return f"the checkpoint of step {steps[-1]} in {directory} is kept"


def _reason(error: BaseException) -> str:
    """The operating system's words for a failed write (``No space left on
    device``), from the error or its causes; orbax and tensorstore report
    them inside their own messages (``[os_error_code='28']``)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno)
        found = re.search(r"os_error_code='(\d+)'", str(seen))
        if found:
            return os.strerror(int(found.group(1)))
        seen = seen.__cause__ or seen.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _remove_unfinished(directory: str, step: int) -> None:
    """Removes what a failed save of ``step`` left (orbax's temporary directory)."""
    if jax.process_index() != 0:
        return
    prefix = f"{step}.orbax-checkpoint-tmp"
    for name in _names(directory):
        if name.startswith(prefix):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, description: dict) -> None:
    """Saves ``state`` at ``step`` with its description and digest, and waits
    for the save to end. A failed write is one ``StorageError`` saying what
    is kept; a signal during the save stops it quietly (``Interrupted``)."""
    directory = str(mngr.directory)
    items = dict(state=ocp.args.StandardSave(state),
                 model=ocp.args.JsonSave(description["model"]),
                 recipe=ocp.args.JsonSave(description["recipe"]),
                 config=ocp.args.JsonSave(description["config"]),
                 digest=ocp.args.JsonSave({"sha256": digest(state)}))
    try:
        with quiet():
            mngr.save(step, args=ocp.args.Composite(**items))
            mngr.wait_until_finished()
    except Interrupted:
        mngr.abandoned = True
        raise
    except Exception as error:     # orbax and tensorstore raise many types
        mngr.abandoned = True
        _remove_unfinished(directory, step)
        raise StorageError(f"cannot save the checkpoint of step {step} in {directory}: "
                           f"{_reason(error)}; {kept(directory)}; make room (or make the "
                           f"directory writable) and rerun the same command to resume") from error


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
    items = {"state": ocp.args.StandardRestore(abstract)}
    if os.path.isdir(os.path.join(where, "digest")):    # older checkpoints have none
        items["digest"] = ocp.args.JsonRestore()
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:
        raise _corrupted(where, error) from error
    if "digest" in items and restored["digest"].get("sha256") != digest(restored["state"]):
        raise CheckpointError(f"checkpoint {where} does not match the digest saved with it: its "
                              f"files were damaged after the save; delete that directory to "
                              f"resume from an earlier checkpoint, or use a new --workdir")
    return step, restored["state"]
