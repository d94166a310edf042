"""Orbax checkpoints of the training state, with a description of the model
they hold so that a checkpoint of another architecture or class count is
refused with a clear message.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
    """A checkpoint that is missing, incompatible or unreadable."""


def manager(workdir: str, keep: int, create: bool = True) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, description: dict) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            model=ocp.args.JsonSave(description)))
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, target: Any, description: dict) -> tuple[int, Any] | None:
    """Restores the latest checkpoint into the structure, shapes and shardings
    of ``target``; None when there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    where = os.path.join(str(mngr.directory), str(step))
    try:
        saved = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
    except Exception as error:
        raise CheckpointError(f"checkpoint {where} is corrupted or truncated "
                              f"({type(error).__name__}); delete it to resume from an earlier one") from None
    mismatched = {k: (saved.get(k), v) for k, v in description.items() if saved.get(k) != v}
    if mismatched:
        details = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in mismatched.items())
        raise CheckpointError(f"checkpoint {where} holds another model ({details})")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as error:
        raise CheckpointError(f"checkpoint {where} is corrupted or truncated "
                              f"({type(error).__name__}: {str(error)[:200]})") from None
    return step, restored["state"]
