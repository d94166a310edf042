"""A quick-start config with tiny architectures, for command-line tests.

Registers ``tiny_vgg`` and ``tiny_resnet`` (tests/helpers.py) in the model
registry of the process that loads this config.
"""

from configs import quickstart
from cosjax.models import ARCHITECTURES
from tests.helpers import tiny_resnet, tiny_vgg


def get_config():
    ARCHITECTURES.setdefault("tiny_vgg", lambda num_classes, levels: tiny_vgg(num_classes, levels))
    ARCHITECTURES.setdefault("tiny_resnet",
                             lambda num_classes, levels: tiny_resnet(num_classes, levels))
    config = quickstart.get_config()
    config.model.arch = "tiny_resnet"
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
