"""Entry point: ``python -m train.main --config=configs/cifar100.py --workdir=DIR``.

Trains a QCFS ANN with the reference recipe (or resumes it), converts it to an
SNN, calibrates its offset spikes (COS) and reports accuracy at every time
step. ``--config.mode=eval`` evaluates the checkpoint in the workdir (or
``--config.init_from=model.pth``). Bad input stops with a one-line message and
exit status 2.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results "
                    "(on several hosts: a directory every host sees, e.g. NFS or a gcsfuse mount).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU VM pods, "
                  "multi-node GPU); the coordinator is found from the environment.")
config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)   # keep orbax/grain INFO lines out of the way
    import jax

    if FLAGS.multihost:
        jax.distributed.initialize()

    from train.checkpoints import CheckpointError
    from train.data import DataError
    from train.train import TrainingError, run
    from train.validate import ConfigError

    try:
        run(FLAGS.config, FLAGS.workdir)
    except (ConfigError, DataError, CheckpointError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
