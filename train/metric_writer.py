"""Training metrics as JSON lines (``metrics.jsonl``) and TensorBoard summaries,
written by process 0 only."""

from __future__ import annotations

import json
import os

import jax

from cosjax.files import atomic_write
from train.errors import StorageError


class MetricWriter:
    """Appends ``{"step": ..., name: value, ...}`` rows to ``workdir/metrics.jsonl``
    (and TensorBoard scalars when tensorboardX is installed)."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self.tb = None

    def write(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        except OSError as error:
            raise self._failed(error) from error
        if self.tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(name, value, step)
            self.tb.flush()

    def discard_after(self, step: int) -> None:
        """Drops the rows of steps after ``step`` (written before an interruption,
        after the checkpoint training resumes from) and any partly written
        last line, so that a resumed run logs every step once."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        def write(tmp):
            with open(tmp, "w") as f:
                f.writelines(kept)

        try:
            atomic_write(self.path, write)
        except OSError as error:
            raise self._failed(error) from error

    def _failed(self, error: OSError) -> StorageError:
        return StorageError(f"cannot write {self.path}: {error.strerror or error}; the "
                            f"checkpoints saved so far are kept; make room (or make the "
                            f"workdir writable) and rerun the same command to resume")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
