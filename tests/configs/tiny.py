"""A quick-start config with a tiny architecture, for command-line tests.

The network is given as a factory import path (``tests.helpers:tiny_resnet``,
see ``train/architectures.py``), so loading this config leaves the model
registry as it is.
"""

from configs import quickstart

TINY_RESNET = "tests.helpers:tiny_resnet"
TINY_VGG = "tests.helpers:tiny_vgg"


def get_config():
    config = quickstart.get_config()
    config.model.arch = TINY_RESNET
    config.optim.epochs = 2
    config.optim.batch_size = 32
    config.snn.time_steps = (1, 2, 4)
    config.snn.presim = 2
    config.snn.iterations = (1,)
    config.snn.eval_batch_size = 40
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    config.data_threads = 2
    return config
