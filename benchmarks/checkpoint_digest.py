"""What the checkpoint digest costs: the time to hash a training state the size
of a config's (``train.checkpoints.digest``, run at every save and restore),
beside the time orbax takes to save and restore that state.

Usage::

    python -m benchmarks.checkpoint_digest [--config=configs/imagenet.py] [--repeats=3]
        [--no-save]

The state is the one ``train.training_loop.create_state`` builds for the
config (parameters, batch statistics, the optimiser's momentum and, if the
config asks for one, the weight average), filled with random values on the
default device; the class count is the config's data set's (ImageNet: 1000).
Prints the state's size, then the median of ``--repeats`` timings of the
digest (device to host copy and hashing) and of an orbax save and restore to
a temporary directory (on the file system of ``$TMPDIR``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks import timing

CLASSES = {"imagenet": 1000, "cifar100": 100, "cifar10": 10}


def random_state(config, num_classes: int):
    """A training state of ``config``'s model, filled with uniform random
    values (integers: zeros), on the default device."""
    from train import architectures
    from train.training_loop import create_state

    model = architectures.from_config(config, num_classes)
    shape = (config.dataset.image_size, config.dataset.image_size, 3)
    abstract = jax.eval_shape(lambda: create_state(model, config, shape, 1000, None))
    leaves, treedef = jax.tree_util.tree_flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    filled = [jax.random.uniform(k, a.shape, a.dtype) if jnp.issubdtype(a.dtype, jnp.floating)
              else jnp.zeros(a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    return jax.block_until_ready(jax.tree_util.tree_unflatten(treedef, filled))


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/imagenet.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-save", action="store_true", help="time the digest only")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    import orbax.checkpoint as ocp

    from train import checkpoints
    from train.main import FlagError, load_config_file

    try:
        config = load_config_file(args.config)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state = random_state(config, CLASSES.get(config.dataset.name, 1000))
    leaves = jax.tree_util.tree_leaves(state)
    size = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves)
    print(timing.device_info())
    print(f"{args.config}: {config.model.arch}, optim.average={config.optim.average}: "
          f"{len(leaves)} arrays, {size / 2**20:.0f} MiB")
    digest = _median_seconds(lambda: checkpoints.digest(state), args.repeats)
    print(f"digest: {digest:.2f} s ({size / 2**20 / digest:.0f} MiB/s), median of {args.repeats}")
    if args.no_save:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ocp.StandardCheckpointer()
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        paths = iter(range(args.repeats))

        def save():
            checkpointer.save(f"{tmp}/{next(paths)}", state)
            checkpointer.wait_until_finished()

        saved = _median_seconds(save, args.repeats)
        restored = _median_seconds(lambda: jax.block_until_ready(
            checkpointer.restore(f"{tmp}/0", abstract)), args.repeats)
    print(f"orbax save: {saved:.2f} s, restore: {restored:.2f} s (medians of {args.repeats}); "
          f"the digest adds {100 * digest / saved:.0f}% to a save and "
          f"{100 * digest / restored:.0f}% to a restore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
