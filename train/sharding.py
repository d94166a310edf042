"""The device mesh of a run and the assembly of per-process batches into
global arrays: a 1-D ``data`` mesh over every device, batches sharded over it,
parameters and optimiser state replicated."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


class Shardings(NamedTuple):
    mesh: Mesh
    data: NamedSharding         # batch axis split over the devices
    replicated: NamedSharding   # the same value on every device


def make_mesh() -> Shardings:
    """A 1-D ``data`` mesh over every device of every process."""
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    return Shardings(mesh, NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles this process's share of a batch (``[G/P, ...]`` per key) into
    global arrays ``[G, ...]``."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
